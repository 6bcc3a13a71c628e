// Errors of this page, kept for whoever looks (the browser test reads them). Loaded first, by the
// dashboard and the static report alike.
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push(e.message || ("failed to load " + ((e.target && (e.target.src || e.target.href)) || "a resource")));
}, true);
window.addEventListener("unhandledrejection", function (e) { window.__errors.push(String(e.reason)); });
(function () {
  const original = console.error;
  console.error = function () { window.__errors.push(Array.from(arguments).join(" ")); original.apply(console, arguments); };
})();
