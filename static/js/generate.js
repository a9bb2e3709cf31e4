/* The generate form, made nicer when scripts run: the custom size fields show only for "Custom", the
 * seed gets a "Random" button, and Ctrl/Cmd+Enter submits. Without JavaScript the form works as it is. */
(function () {
  "use strict";

  var form = document.querySelector("[data-generate-form]");
  if (!form) return;

  var custom = form.querySelector("[data-custom-size]");
  var hint = form.querySelector("[data-custom-hint]");
  var radios = form.querySelectorAll('input[name="size"]');

  function syncSize() {
    var chosen = form.querySelector('input[name="size"]:checked');
    var isCustom = chosen && chosen.value === "custom";
    custom.hidden = !isCustom;
    if (hint) hint.hidden = true;
    if (!isCustom && chosen) {
      var parts = chosen.value.split("x");
      form.querySelector('input[name="width"]').value = parts[0];
      form.querySelector('input[name="height"]').value = parts[1];
    }
  }
  radios.forEach(function (radio) { radio.addEventListener("change", syncSize); });
  syncSize();

  var seed = form.querySelector('input[name="seed"]');
  var random = form.querySelector("[data-random-seed]");
  if (seed && random) {
    random.hidden = false;
    random.addEventListener("click", function () {
      seed.value = "";
      seed.focus();
    });
  }

  form.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  var summary = form.querySelector(".error-summary");
  if (summary) summary.focus();
})();
