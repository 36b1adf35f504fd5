// The overview's live figures: fetch the fragment every few seconds and swap it in. Without
// script the page is the same, only not live.
(function () {
  var box = document.getElementById("live");
  if (!box) return;
  function tick() {
    fetch(box.dataset.src, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) {
        if (r.redirected || !r.ok) { window.location.reload(); return null; }
        return r.text();
      })
      .then(function (html) { if (html !== null) box.innerHTML = html; })
      .catch(function () {})
      .then(function () { setTimeout(tick, 2000); });
  }
  setTimeout(tick, 2000);
})();
