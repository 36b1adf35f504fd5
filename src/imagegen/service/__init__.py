"""imagegen's use cases, one module per group, written against the ports and awaited on the loop.

The HTTP API, the CLI, the workers, the scheduler and the Cloud Functions all call these functions;
none of them talks to a database directly. Each use case asks only for the ports it uses. The names
are gathered here so that callers write `service.create_generation(...)`.
"""

from imagegen.service.audit import verify
from imagegen.service.bindings import bind_model, model_settings, set_prices, unbind_model
from imagegen.service.catalog import CATALOG_KINDS, model_queues, set_model, set_option
from imagegen.service.checks import check_cursor, check_idempotency_key, check_user_id
from imagegen.service.config_cache import ConfigCache
from imagegen.service.credits import (
    create_user,
    get_credits,
    get_user,
    ledger_page,
    move_credits,
    user_totals,
)
from imagegen.service.first_start import FirstStart, first_start
from imagegen.service.generations import (
    CreateRules,
    cancel_generation,
    create_generation,
    fingerprint,
    get_generation,
    is_terminal,
    list_generations,
    prepare_generation,
    wait_until_done,
)
from imagegen.service.keys import (
    ADMIN,
    KEY_PREFIX,
    IssuedKey,
    Principal,
    authenticate,
    authenticate_hash,
    hash_key,
    issue_key,
    list_keys,
    new_key,
    revoke_key,
)
from imagegen.service.overview import Overview, overview
from imagegen.service.reports import (
    BASELINE_WEEKS,
    get_report,
    list_reports,
    mark_expected,
    parse_period,
    report_history,
    run_report,
    weeks_between,
)

__all__ = [
    "ADMIN",
    "BASELINE_WEEKS",
    "CATALOG_KINDS",
    "KEY_PREFIX",
    "ConfigCache",
    "FirstStart",
    "IssuedKey",
    "Overview",
    "Principal",
    "authenticate",
    "authenticate_hash",
    "bind_model",
    "cancel_generation",
    "check_cursor",
    "check_idempotency_key",
    "check_user_id",
    "CreateRules",
    "create_generation",
    "create_user",
    "fingerprint",
    "first_start",
    "get_credits",
    "get_generation",
    "get_report",
    "get_user",
    "hash_key",
    "is_terminal",
    "issue_key",
    "list_keys",
    "revoke_key",
    "ledger_page",
    "list_generations",
    "list_reports",
    "mark_expected",
    "model_queues",
    "model_settings",
    "move_credits",
    "new_key",
    "overview",
    "parse_period",
    "prepare_generation",
    "report_history",
    "revoke_key",
    "run_report",
    "set_model",
    "set_option",
    "set_prices",
    "unbind_model",
    "user_totals",
    "verify",
    "wait_until_done",
    "weeks_between",
]
