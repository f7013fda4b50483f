// Study browser of the results page: reads the JSON in #cxr-data and renders one page of studies.
// The view (sort, filters, page) lives in the URL fragment, e.g. #sort=bleu_4&sys=base&dir=asc:
//   sort    "" (input order), "id" or a score key        sys     system whose score is sorted on
//   dir     "asc" | "desc"                               diff    "1": sort on sys minus baseline
//   finding observation column                           fmode   any | ref | gen | dis
//   status  ok | empty | error | missing                 q       text search (id, reference, reports)
//   page    1-based page number                          size    studies per page
// Every text from the data is put into the page with textContent or createTextNode, never as markup.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("cxr-data").textContent);
  var SYS = D.systems;
  var SC = D.scores;
  var OBS = D.observations;
  var ST = D.studies;
  var WORD = /[\p{L}\p{N}]+/gu;
  var STOP = new Set(["a", "an", "the", "is", "are", "was", "were", "be", "of", "and", "or", "in", "on",
    "at", "to", "with", "for", "by", "as", "this", "that", "there", "it", "its"]);
  var SYMBOL = { P: "+", N: "\u2212", U: "?", ".": "\u00b7" };
  var CODE_NAME = { P: "positive", N: "negative", U: "uncertain", ".": "not mentioned" };
  var DEFAULTS = { sort: "", sys: SYS[0], dir: "desc", diff: "", finding: "", fmode: "any", status: "",
    q: "", page: "1", size: String(D.page_size) };
  var searchText = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function readState() {
    var p = new URLSearchParams(location.hash.replace(/^#/, ""));
    var s = {};
    Object.keys(DEFAULTS).forEach(function (k) { s[k] = p.has(k) ? p.get(k) : DEFAULTS[k]; });
    if (SYS.indexOf(s.sys) < 0) s.sys = SYS[0];
    if (s.dir !== "asc") s.dir = "desc";
    return s;
  }

  function setState(changes, keepPage) {
    var s = readState();
    Object.keys(changes).forEach(function (k) { s[k] = changes[k]; });
    if (!keepPage) s.page = "1";
    var p = new URLSearchParams();
    Object.keys(DEFAULTS).forEach(function (k) {
      if (s[k] !== DEFAULTS[k] && s[k] !== "") p.set(k, s[k]);
    });
    var h = p.toString();
    if (location.hash.replace(/^#/, "") === h) render();
    else location.hash = h;
  }

  // Clinical labels: positive under the evaluation's policy for uncertain findings.
  function pos(c) { return c === "P" || (D.uncertain === "positive" && c === "U"); }
  function disagree(h, r) {
    if (D.uncertain === "exclude" && (h === "U" || r === "U")) return false;
    return pos(h) !== pos(r);
  }

  function scoreIndex(key) {
    for (var i = 0; i < SC.length; i++) if (SC[i][0] === key) return i;
    return -1;
  }

  function value(st, k, j, diff) {
    var it = st.s[j];
    if (!it || it.v[k] === null || it.v[k] === undefined) return null;
    if (!diff) return it.v[k];
    var b = st.s[0];
    if (!b || b.v[k] === null || b.v[k] === undefined) return null;
    return it.v[k] - b.v[k];
  }

  function matches(st, s, fi, q) {
    var j, it;
    if (s.status) {
      var hit = false;
      for (j = 0; j < st.s.length; j++) {
        if ((st.s[j] ? st.s[j].st : "missing") === s.status) hit = true;
      }
      if (!hit) return false;
    }
    if (fi >= 0) {
      var r = st.rl ? st.rl[fi] : ".";
      var ok = false;
      if (s.fmode === "ref") ok = pos(r);
      else if (s.fmode === "any" && r !== ".") ok = true;
      for (j = 0; j < st.s.length && !ok; j++) {
        it = st.s[j];
        if (!it || !it.l) continue;
        if (s.fmode === "gen") ok = pos(it.l[fi]);
        else if (s.fmode === "dis") ok = it.st !== "error" && disagree(it.l[fi], r);
        else if (s.fmode === "any") ok = it.l[fi] !== ".";
      }
      if (!ok) return false;
    }
    if (q) {
      if (searchText === null) {
        searchText = ST.map(function (x) {
          return [x.id, x.ref].concat(x.s.map(function (i) { return i ? i.t : ""; })).join("\n").toLowerCase();
        });
      }
      if (searchText[st._i].indexOf(q) < 0) return false;
    }
    return true;
  }

  function view(s) {
    var fi = -1;
    for (var o = 0; o < OBS.length; o++) if (OBS[o][0] === s.finding) fi = o;
    var q = s.q.trim().toLowerCase();
    var rows = ST.filter(function (st) { return matches(st, s, fi, q); });
    var sign = s.dir === "asc" ? 1 : -1;
    if (s.sort === "id") {
      rows.sort(function (a, b) {
        return sign * a.id.localeCompare(b.id, undefined, { numeric: true }) || a._i - b._i;
      });
    } else if (scoreIndex(s.sort) >= 0) {
      var k = scoreIndex(s.sort), j = SYS.indexOf(s.sys), diff = s.diff === "1" && j > 0;
      var keyed = rows.map(function (st) { return [value(st, k, j, diff), st]; });
      keyed.sort(function (a, b) {
        if (a[0] === null || b[0] === null) {
          if (a[0] === b[0]) return a[1]._i - b[1]._i;
          return a[0] === null ? 1 : -1; // no score: last either way
        }
        return sign * (a[0] - b[0]) || a[1]._i - b[1]._i;
      });
      rows = keyed.map(function (x) { return x[1]; });
    }
    return rows;
  }

  // ---------------------------------------------------------------------------------------------
  // Rendering

  function wordSet(text) {
    var out = new Set();
    (text.toLowerCase().match(WORD) || []).forEach(function (w) { out.add(w); });
    return out;
  }

  function reportText(text, refWords) {
    var p = el("p", "report");
    if (!text) {
      p.appendChild(el("span", "muted", "(empty)"));
      return p;
    }
    var last = 0;
    for (var m of text.matchAll(WORD)) {
      var w = m[0], lw = w.toLowerCase();
      if (refWords && refWords.has(lw) && !STOP.has(lw)) {
        if (m.index > last) p.appendChild(document.createTextNode(text.slice(last, m.index)));
        p.appendChild(el("mark", null, w));
        last = m.index + w.length;
      }
    }
    if (last < text.length) p.appendChild(document.createTextNode(text.slice(last)));
    return p;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "\u2014";
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(Math.abs(v) >= 10 ? 2 : 3);
  }

  function scoreChips(st, j, s) {
    var box = el("div", "scores");
    var extra = el("div", "scores extra");
    var it = st.s[j];
    var sortK = scoreIndex(s.sort);
    SC.forEach(function (sc, k) {
      var chip = el("button", "score", null);
      chip.type = "button";
      chip.appendChild(el("span", "k", sc[1]));
      chip.appendChild(document.createTextNode(" " + fmt(it.v[k])));
      chip.title = "sort all studies by " + sc[1] + " of " + SYS[j];
      chip.dataset.key = sc[0];
      if (k === sortK && SYS[j] === s.sys) chip.className += " sorted";
      chip.addEventListener("click", function () {
        setState({ sort: sc[0], sys: SYS[j], diff: "", dir: sc[2] === "high" ? "desc" : "asc" });
      });
      (sc[3] === "extra" ? extra : box).appendChild(chip);
    });
    if (sortK >= 0 && s.diff === "1" && j > 0 && SYS[j] === s.sys) {
      var d = value(st, sortK, j, true);
      box.appendChild(el("span", "score delta sorted",
        "\u0394 " + SC[sortK][1] + " " + (d === null ? "\u2014" : (d >= 0 ? "+" : "") + fmt(d))));
    }
    var wrap = el("div");
    wrap.appendChild(box);
    if (extra.childNodes.length) wrap.appendChild(extra);
    return wrap;
  }

  function findingsTable(st) {
    var t = el("table", "labels");
    var head = el("tr");
    head.appendChild(el("th", null, ""));
    head.appendChild(el("th", null, "ref"));
    SYS.forEach(function (n) { head.appendChild(el("th", null, n)); });
    t.appendChild(head);
    var rl = st.rl || "";
    var any = false;
    OBS.forEach(function (ob, o) {
      var r = rl[o] || ".";
      var mentioned = r !== ".";
      st.s.forEach(function (it) { if (it && it.l && it.l[o] !== ".") mentioned = true; });
      if (!mentioned) return;
      any = true;
      var tr = el("tr");
      tr.dataset.obs = ob[0];
      tr.appendChild(el("th", null, ob[1]));
      var rc = el("td", "c-" + (r === "." ? "none" : r), SYMBOL[r]);
      rc.title = "reference: " + CODE_NAME[r];
      tr.appendChild(rc);
      st.s.forEach(function (it, j) {
        var c = it && it.l ? it.l[o] : null;
        var td = el("td", c ? "c-" + (c === "." ? "none" : c) : "c-none", c ? SYMBOL[c] : "");
        if (c) {
          td.title = SYS[j] + ": " + CODE_NAME[c];
          if (it.st !== "error" && disagree(c, r)) {
            td.className += " dis";
            td.title += " (disagrees with the reference)";
          }
        }
        tr.appendChild(td);
      });
      t.appendChild(tr);
    });
    if (!any) return el("p", "muted", "no finding labelled");
    return t;
  }

  // The study a retrieved report was taken from (retrieval backend), shown beside the report.
  function retrievedFrom(r) {
    var box = el("div", "retrieved");
    if (r.img) {
      var img = el("img");
      img.src = r.img;
      img.alt = "X-ray " + r.id;
      box.appendChild(img);
    }
    var sim = r.sim === null || r.sim === undefined ? "" : " (cosine " + Number(r.sim).toFixed(3) + ")";
    box.appendChild(el("span", "muted", "retrieved from " + r.id + sim));
    return box;
  }

  function studyRow(st, s) {
    var tr = el("tr", "study");
    tr.dataset.id = st.id;
    var tdImg = el("td", "thumb");
    if (st.img) {
      var img = el("img");
      img.src = st.img;
      img.alt = "X-ray " + st.id;
      img.decoding = "async";
      tdImg.appendChild(img);
    } else {
      var ph = el("div", "noimg", "no image");
      ph.title = st.imgerr || "";
      tdImg.appendChild(ph);
    }
    tdImg.appendChild(el("div", "sid", st.id));
    tr.appendChild(tdImg);
    var tdRef = el("td", "ref");
    tdRef.appendChild(reportText(st.ref, null));
    tr.appendChild(tdRef);
    var refWords = wordSet(st.ref);
    SYS.forEach(function (n, j) {
      var it = st.s[j];
      var td = el("td", "gen st-" + (it ? it.st : "missing"));
      if (!it) {
        td.appendChild(el("span", "badge", "missing"));
      } else {
        td.appendChild(el("span", "badge", it.st));
        if (it.st === "error") td.appendChild(el("p", "error", it.e || "error"));
        else {
          if (it.r) td.appendChild(retrievedFrom(it.r));
          td.appendChild(reportText(it.t, refWords));
        }
        if (SC.length && it.st !== "error") {
          var scored = SC.some(function (sc, k) { return sc[3] === "score" && it.v[k] !== null; });
          if (!scored && SC.some(function (sc) { return sc[3] === "score"; })) {
            td.appendChild(el("p", "muted not-scored", "not scored (excluded from the evaluation)"));
          }
          td.appendChild(scoreChips(st, j, s));
        }
      }
      tr.appendChild(td);
    });
    if (OBS.length) {
      var tdF = el("td", "findings");
      tdF.appendChild(findingsTable(st));
      tr.appendChild(tdF);
    }
    return tr;
  }

  function option(sel, valueText, label) {
    var o = el("option", null, label);
    o.value = valueText;
    sel.appendChild(o);
    return o;
  }

  function labelled(text, control) {
    var l = el("label", null, text + " ");
    l.appendChild(control);
    return l;
  }

  var C = {};

  function buildControls() {
    var box = document.getElementById("controls");
    C.sort = el("select");
    C.sort.id = "sort-key";
    option(C.sort, "", "input order");
    option(C.sort, "id", "study id");
    SC.forEach(function (sc) { option(C.sort, sc[0], sc[1]); });
    C.sys = el("select");
    C.sys.id = "sort-system";
    SYS.forEach(function (n) { option(C.sys, n, n); });
    C.dir = el("select");
    C.dir.id = "sort-dir";
    option(C.dir, "desc", "highest first");
    option(C.dir, "asc", "lowest first");
    C.diff = el("input");
    C.diff.type = "checkbox";
    C.diff.id = "sort-diff";
    C.worst = el("button", "worst-btn", "worst first");
    C.worst.type = "button";
    C.finding = el("select");
    C.finding.id = "filter-finding";
    option(C.finding, "", "any finding");
    OBS.forEach(function (ob) { option(C.finding, ob[0], ob[1]); });
    C.fmode = el("select");
    C.fmode.id = "filter-fmode";
    option(C.fmode, "any", "mentioned anywhere");
    option(C.fmode, "ref", "positive in the reference");
    option(C.fmode, "gen", "positive in a generated report");
    option(C.fmode, "dis", "generated disagrees with reference");
    C.status = el("select");
    C.status.id = "filter-status";
    option(C.status, "", "any status");
    ["ok", "empty", "error", "missing"].forEach(function (x) { option(C.status, x, x); });
    C.q = el("input");
    C.q.type = "search";
    C.q.id = "filter-q";
    C.q.placeholder = "id or words";
    C.size = el("select");
    C.size.id = "page-size";
    ["25", "50", "100", "200"].forEach(function (x) { option(C.size, x, x); });
    if (["25", "50", "100", "200"].indexOf(String(D.page_size)) < 0) option(C.size, String(D.page_size), String(D.page_size));

    var line1 = el("div", "controls-line");
    line1.appendChild(labelled("Sort by", C.sort));
    line1.appendChild(labelled("of", C.sys));
    if (SYS.length > 1) line1.appendChild(labelled("minus " + SYS[0], C.diff));
    line1.appendChild(C.dir);
    line1.appendChild(C.worst);
    var line2 = el("div", "controls-line");
    line2.appendChild(labelled("Finding", C.finding));
    line2.appendChild(C.fmode);
    line2.appendChild(labelled("Status", C.status));
    line2.appendChild(labelled("Search", C.q));
    line2.appendChild(labelled("Per page", C.size));
    box.appendChild(line1);
    box.appendChild(line2);
    if (!OBS.length) { C.finding.disabled = true; C.fmode.disabled = true; }

    C.sort.addEventListener("change", function () { setState({ sort: C.sort.value }); });
    C.sys.addEventListener("change", function () { setState({ sys: C.sys.value }); });
    C.dir.addEventListener("change", function () { setState({ dir: C.dir.value }); });
    C.diff.addEventListener("change", function () { setState({ diff: C.diff.checked ? "1" : "" }); });
    C.worst.addEventListener("click", function () {
      var key = scoreIndex(C.sort.value) >= 0 ? C.sort.value : (SC.length ? SC[0][0] : "");
      var k = scoreIndex(key);
      if (k < 0) return;
      setState({ sort: key, dir: SC[k][2] === "high" && !C.diff.checked ? "desc" : "asc" });
    });
    C.finding.addEventListener("change", function () { setState({ finding: C.finding.value }); });
    C.fmode.addEventListener("change", function () { setState({ fmode: C.fmode.value }); });
    C.status.addEventListener("change", function () { setState({ status: C.status.value }); });
    C.q.addEventListener("change", function () { setState({ q: C.q.value }); });
    C.size.addEventListener("change", function () { setState({ size: C.size.value }); });
  }

  function pager(box, page, pages, total, scroll) {
    box.textContent = "";
    function btn(label, target, cls) {
      var b = el("button", cls, label);
      b.type = "button";
      b.disabled = target < 1 || target > pages || target === page;
      b.addEventListener("click", function () {
        setState({ page: String(target) }, true);
        if (scroll) document.getElementById("browser").scrollIntoView();
      });
      box.appendChild(b);
    }
    btn("\u00ab first", 1, "first");
    btn("\u2039 previous", page - 1, "prev");
    box.appendChild(el("span", "page-info", "page " + page + " of " + pages + " \u00b7 " + total +
      (total === 1 ? " study" : " studies") + (total < ST.length ? " of " + ST.length : "")));
    btn("next \u203a", page + 1, "next");
    btn("last \u00bb", pages, "last");
  }

  function render() {
    var s = readState();
    C.sort.value = scoreIndex(s.sort) >= 0 || s.sort === "id" ? s.sort : "";
    C.sys.value = s.sys;
    C.dir.value = s.dir;
    C.diff.checked = s.diff === "1";
    C.finding.value = s.finding;
    C.fmode.value = ["any", "ref", "gen", "dis"].indexOf(s.fmode) >= 0 ? s.fmode : "any";
    C.status.value = s.status;
    if (document.activeElement !== C.q) C.q.value = s.q;
    var size = Math.max(1, parseInt(s.size, 10) || D.page_size);
    C.size.value = String(size);

    var rows = view(s);
    var pages = Math.max(1, Math.ceil(rows.length / size));
    var page = Math.min(pages, Math.max(1, parseInt(s.page, 10) || 1));
    var table = document.getElementById("studies");
    var thead = table.tHead;
    thead.textContent = "";
    var hr = el("tr");
    hr.appendChild(el("th", null, "image"));
    // The reference and every generated report get the same share of the width.
    var share = Math.floor(72 / (1 + SYS.length)) + "%";
    var th = el("th", null, "reference");
    th.style.width = share;
    hr.appendChild(th);
    SYS.forEach(function (n, j) {
      th = el("th", null, n + (j === 0 && SYS.length > 1 ? " (baseline)" : ""));
      th.style.width = share;
      hr.appendChild(th);
    });
    if (OBS.length) hr.appendChild(el("th", null, "findings (ref / generated)"));
    thead.appendChild(hr);
    var body = el("tbody");
    rows.slice((page - 1) * size, page * size).forEach(function (st) { body.appendChild(studyRow(st, s)); });
    table.replaceChild(body, table.tBodies[0]);
    if (!rows.length) {
      var empty = el("tr", "none");
      var td = el("td", null, "No study matches the filters.");
      td.colSpan = 3 + SYS.length;
      empty.appendChild(td);
      body.appendChild(empty);
    }
    pager(document.getElementById("pager-top"), page, pages, rows.length, false);
    pager(document.getElementById("pager-bottom"), page, pages, rows.length, true);
    document.body.dataset.shown = String(Math.min(size, rows.length - (page - 1) * size));
  }

  ST.forEach(function (st, i) { st._i = i; });
  buildControls();
  window.addEventListener("hashchange", render);
  // The summary's worst-case links open that view of the studies and scroll to it.
  Array.prototype.forEach.call(document.querySelectorAll("a.worst"), function (a) {
    a.addEventListener("click", function (ev) {
      ev.preventDefault();
      location.hash = a.getAttribute("href").replace(/^#/, "");
      document.getElementById("browser").scrollIntoView();
    });
  });
  render();
  document.documentElement.dataset.renderMs = performance.now().toFixed(1);
})();
