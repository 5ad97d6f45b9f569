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

// Times: every "YYYY-MM-DD HH:MM UTC" on the page gets the viewer's local time beside it,
// and a UTC time input says what its value is in the viewer's time zone.
(function () {
  var pattern = /(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}) UTC/;
  var local = function (d) {
    return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  };
  var main = document.getElementById("main") || document.body;
  var walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
  var found = [];
  while (walker.nextNode()) {
    if (pattern.test(walker.currentNode.nodeValue)) found.push(walker.currentNode);
  }
  found.forEach(function (node) {
    var m = node.nodeValue.match(pattern);
    var d = new Date(Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5]));
    if (!node.parentNode || node.parentNode.closest("time, .local-time")) return;
    var note = document.createElement("span");
    note.className = "local-time";
    note.textContent = " (" + local(d) + " your time) ";
    node.parentNode.insertBefore(note, node.nextSibling);
  });
  document.querySelectorAll("input[type=datetime-local]").forEach(function (input) {
    var out = input.id === "expires_at" ? document.getElementById("expires-local") : null;
    if (!out) {
      out = document.createElement("span");
      out.className = "hint local-time";
      input.insertAdjacentElement("afterend", out);
    }
    var show = function () {
      var m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})/.exec(input.value);
      out.textContent = m ? "that is " + local(new Date(Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5]))) + " your time." : "";
    };
    input.addEventListener("input", show);
    show();
  });
})();

// A refused form: the summary of what to fix takes focus, so it is read first.
(function () {
  var summary = document.getElementById("form-errors");
  if (summary) summary.focus();
})();
