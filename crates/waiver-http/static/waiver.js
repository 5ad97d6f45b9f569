// Progressive enhancement only: every page works without this file.
// On the request form, mark the rules row for the chosen risk and say how long it may run.
(function () {
  var risk = document.getElementById("risk");
  var rows = document.querySelectorAll("#rules tr[data-risk]");
  var hint = document.getElementById("max-hint");
  if (!risk || !rows.length) return;
  function mark() {
    rows.forEach(function (row) {
      var on = row.getAttribute("data-risk") === risk.value;
      row.classList.toggle("current", on);
      if (on && hint) hint.textContent = "At " + risk.value + " risk it may run at most " + row.getAttribute("data-max") + ".";
    });
  }
  risk.addEventListener("change", mark);
  mark();
})();
