// Load candidate policy files from the administrator's computer into the form's text
// (schema.cedarschema, base.cedar, anything else as overrides/<name>.cedar). Without
// script the text can still be pasted; nothing here talks to the network.
"use strict";
(function () {
  var input = document.getElementById("files");
  var text = document.getElementById("candidate");
  var status = document.getElementById("files-status");
  if (!input || !text) { return; }
  var NAME = /^[a-z0-9][a-z0-9-]{0,30}\.cedar$/;
  function target(name) {
    if (name === "schema.cedarschema" || name === "base.cedar") { return name; }
    if (NAME.test(name)) { return "overrides/" + name; }
    return null;
  }
  function order(a, b) {
    function rank(n) { return n === "schema.cedarschema" ? 0 : n === "base.cedar" ? 1 : 2; }
    return rank(a.name) - rank(b.name) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  }
  input.addEventListener("change", function () {
    var files = Array.prototype.slice.call(input.files || []);
    var bad = files.filter(function (f) { return target(f.name) === null; });
    if (bad.length) {
      status.textContent = bad.map(function (f) { return f.name; }).join(", ") + ": ?";
      return;
    }
    Promise.all(files.sort(order).map(function (f) {
      return f.text().then(function (body) {
        return "// ---- " + target(f.name) + "\n" + body + (body.endsWith("\n") ? "" : "\n");
      });
    })).then(function (parts) {
      text.value = parts.join("");
      status.textContent = files.map(function (f) { return target(f.name); }).join(", ");
    });
  });
})();
