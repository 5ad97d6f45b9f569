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

// Drafts: what is typed into a form is kept in this tab until the form goes through, so a
// sign-in that expires mid-action loses nothing: after signing in again, the page offers it
// back (on the same page, the fields are filled again).
(function () {
  var KEY = "waiver.draft";
  var store = window.sessionStorage;
  if (!store) return;
  var done = document.querySelector(".flash.ok, #flash.ok");
  if (done) store.removeItem(KEY);
  var forms = document.querySelectorAll("main form[method=post]");
  forms.forEach(function (form) {
    var save = function () {
      var fields = {};
      form.querySelectorAll("input[type=text], input[type=search], textarea").forEach(function (el) {
        if (el.name && el.value) fields[el.name] = el.value;
      });
      if (Object.keys(fields).length === 0) return;
      store.setItem(KEY, JSON.stringify({ path: location.pathname + location.search, action: form.getAttribute("action"), fields: fields }));
    };
    form.addEventListener("input", save);
    form.addEventListener("submit", save);
  });
  var held;
  try { held = JSON.parse(store.getItem(KEY) || "null"); } catch (e) { held = null; }
  if (!held || done) return;
  var main = document.getElementById("main");
  if (!main) return;
  var note = document.createElement("div");
  note.className = "flash info";
  note.id = "draft-note";
  note.setAttribute("role", "status");
  var here = held.path === location.pathname + location.search;
  if (here) {
    var form = document.querySelector('main form[action="' + held.action + '"]');
    if (!form) return;
    Object.keys(held.fields).forEach(function (name) {
      var el = form.querySelector('[name="' + name + '"]');
      if (el && !el.value) el.value = held.fields[name];
    });
    note.textContent = "What you had typed here is back: check it and send it again.";
  } else {
    note.appendChild(document.createTextNode("You have an unsent draft. "));
    var link = document.createElement("a");
    link.href = held.path;
    link.id = "draft-link";
    link.textContent = "Go back to it";
    note.appendChild(link);
  }
  main.insertBefore(note, main.firstChild);
})();

// Saved views of the register: named filter sets kept in this browser.
(function () {
  var filters = document.querySelector("form.filters[aria-label='Filter the register']");
  if (!filters || !window.localStorage) return;
  var KEY = "waiver.views";
  var views;
  try { views = JSON.parse(localStorage.getItem(KEY) || "{}"); } catch (e) { views = {}; }
  var box = document.createElement("div");
  box.className = "saved-views small";
  box.id = "saved-views";
  var render = function () {
    box.textContent = "";
    var names = Object.keys(views).sort();
    if (names.length) box.appendChild(document.createTextNode("Saved views: "));
    names.forEach(function (name, i) {
      var a = document.createElement("a");
      a.href = "/ui/exceptions" + views[name];
      a.textContent = name;
      box.appendChild(a);
      var drop = document.createElement("button");
      drop.type = "button";
      drop.className = "link";
      drop.setAttribute("aria-label", "Forget the view " + name);
      drop.textContent = "×";
      drop.addEventListener("click", function () { delete views[name]; localStorage.setItem(KEY, JSON.stringify(views)); render(); });
      box.appendChild(drop);
      if (i < names.length - 1) box.appendChild(document.createTextNode(" · "));
    });
    var save = document.createElement("button");
    save.type = "button";
    save.className = "secondary";
    save.id = "save-view";
    save.textContent = "Save this view";
    save.addEventListener("click", function () {
      var name = window.prompt("A name for this view");
      if (!name) return;
      views[name.slice(0, 60)] = location.search;
      localStorage.setItem(KEY, JSON.stringify(views));
      render();
    });
    box.appendChild(document.createTextNode(" "));
    box.appendChild(save);
  };
  render();
  filters.insertAdjacentElement("afterend", box);
})();
