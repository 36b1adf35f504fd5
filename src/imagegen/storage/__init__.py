"""Storage adapters behind the `imagegen.ports.Storage` port."""
