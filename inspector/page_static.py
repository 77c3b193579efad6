"""The style sheet and the script of the HTML page (``inspector.page``), inlined into every page: no
file, font or library is fetched. The script finds each page root (``.insp`` not yet set up) and
wires it: folding the call tree, sorting siblings by a column, the map's figure switch, and the map
and the table pointing at each other. Everything is scoped under ``.insp`` so that a notebook's own
styles are left alone."""

CSS = """
.insp [hidden]{display:none!important}
.insp{font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232b;max-width:1400px}
.insp h1{font-size:20px;margin:4px 0 2px}.insp h2{font-size:15px;margin:18px 0 6px}
.insp .sub{color:#5b6570;margin:0 0 8px}
.insp .cards{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
.insp .card{border:1px solid #d8dde3;border-radius:6px;padding:6px 10px;min-width:110px;background:#fafbfc}
.insp .card b{display:block;font-size:17px;font-variant-numeric:tabular-nums}
.insp .card span{color:#5b6570;font-size:11px;text-transform:uppercase;letter-spacing:.03em}
.insp .bad{color:#b42318}.insp .good{color:#1a7f37}
.insp .controls{display:flex;flex-wrap:wrap;gap:4px;align-items:center;margin:4px 0}
.insp button{font:inherit;font-size:12px;border:1px solid #c5ccd4;background:#fff;border-radius:4px;padding:1px 7px;
 cursor:pointer}
.insp button.on{background:#1d232b;color:#fff;border-color:#1d232b}
.insp table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:2px 0}
.insp th,.insp td{padding:2px 8px;border-bottom:1px solid #eceff2;white-space:nowrap;text-align:left}
.insp th{position:sticky;top:0;background:#f3f5f7;border-bottom:1px solid #c5ccd4;font-weight:600;cursor:pointer;
 user-select:none}
.insp th.num,.insp td.num{text-align:right}
.insp th[aria-sort=descending]::after{content:" \\25BC";font-size:9px}
.insp th[aria-sort=ascending]::after{content:" \\25B2";font-size:9px}
.insp td.name{padding-left:calc(4px + var(--d,0) * 16px)}
.insp td.cfg,.insp td.shape{color:#5b6570;font-size:12px}
.insp tr.own td.name{color:#5b6570;font-style:italic}
.insp tr.hl td{background:#fff6d6}
.insp tbody tr:hover td{background:#f1f6fd}
.insp tfoot td{font-weight:600;border-top:2px solid #c5ccd4}
.insp .tog{display:inline-block;width:14px;border:0;padding:0;background:none;color:#5b6570;font-size:10px}
.insp .tog::before{content:"\\25BE"}.insp tr.closed .tog::before{content:"\\25B8"}
.insp .leaf{display:inline-block;width:14px}
.insp td.share{position:relative;min-width:64px}
.insp td.share .bar{position:absolute;left:2px;top:3px;bottom:3px;background:#cfe0f6;border-radius:2px}
.insp td.share .pct{position:relative}
.insp svg.map{width:100%;height:auto;display:block;border:1px solid #d8dde3;border-radius:4px;background:#fff}
.insp svg.map rect{stroke:#fff;stroke-width:.8;cursor:pointer}
.insp svg.map g.hl>rect{stroke:#1d232b;stroke-width:2.5}
.insp svg.map text{font-size:10px;fill:#1d232b;pointer-events:none}
.insp .legend{color:#5b6570;font-size:12px;margin:4px 0}
.insp ul.facts{margin:4px 0;padding-left:18px}.insp ul.facts li{margin:1px 0}
.insp .stack{display:flex;height:18px;border-radius:3px;overflow:hidden;border:1px solid #d8dde3;max-width:900px}
.insp .stack div{height:100%}
.insp details>summary{cursor:pointer;font-weight:600;margin:12px 0 4px}
.insp .scroll{overflow-x:auto}
.insp .plot svg{max-width:100%;height:auto}
"""

JS = r"""
(function () {
  function num(td) {
    if (!td) return null;
    const v = td.getAttribute('data-v');
    if (v === null || v === '') return null;
    const n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function wireTable(table) {
    const tbody = table.tBodies[0];
    const rows = Array.from(tbody.rows);
    const flat = table.dataset.mode !== 'tree';
    const kids = new Map();
    const byIndex = new Map();
    rows.forEach(function (r) {
      if (r.dataset.kind !== 'own') byIndex.set(r.dataset.index, r);
      const p = flat ? '' : (r.dataset.pindex || '');
      if (!kids.has(p)) kids.set(p, []);
      kids.get(p).push(r);
    });
    function refresh() {
      const order = [];
      (function walk(p, open) {
        (kids.get(p) || []).forEach(function (r) {
          r.hidden = !open;
          order.push(r);
          if (!flat && r.dataset.kind !== 'own') walk(r.dataset.index, open && !r.classList.contains('closed'));
        });
      })('', true);
      order.forEach(function (r) { tbody.appendChild(r); });
    }
    table.inspRefresh = refresh;
    table.inspReveal = function (index) {
      let r = byIndex.get(String(index));
      const target = r;
      while (r) {
        r = byIndex.get(r.dataset.pindex);
        if (r) r.classList.remove('closed');
      }
      refresh();
      return target;
    };
    table.inspDepth = function (d) {
      rows.forEach(function (r) {
        if (r.querySelector('.tog')) r.classList.toggle('closed', d !== null && Number(r.dataset.depth) >= d);
      });
      refresh();
    };
    tbody.addEventListener('click', function (e) {
      const tog = e.target.closest('.tog');
      if (!tog) return;
      tog.closest('tr').classList.toggle('closed');
      refresh();
    });
    Array.from(table.tHead.rows[0].cells).forEach(function (th, col) {
      th.addEventListener('click', function () {
        const current = th.getAttribute('aria-sort');
        const numeric = th.classList.contains('num');
        const dir = current ? (current === 'descending' ? 'ascending' : 'descending')
                            : (numeric ? 'descending' : 'ascending');
        Array.from(th.parentNode.cells).forEach(function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', dir);
        const sign = dir === 'ascending' ? 1 : -1;
        kids.forEach(function (list) {
          list.sort(function (a, b) {
            const x = col === 0 ? Number(a.dataset.order) : num(a.cells[col]);
            const y = col === 0 ? Number(b.dataset.order) : num(b.cells[col]);
            if (x === y) return Number(a.dataset.order) - Number(b.dataset.order);
            if (x === null) return 1;
            if (y === null) return -1;
            return (x < y ? -1 : 1) * sign;
          });
        });
        refresh();
      });
    });
    refresh();
  }
  function wire(root) {
    root.setAttribute('data-ready', '1');
    root.querySelectorAll('table.sortable').forEach(wireTable);
    const tree = root.querySelector('table.tree');
    root.querySelectorAll('[data-depth-button]').forEach(function (b) {
      b.addEventListener('click', function () {
        const d = b.getAttribute('data-depth-button');
        tree.inspDepth(d === 'all' ? null : Number(d));
      });
    });
    const maps = Array.from(root.querySelectorAll('svg.map'));
    root.querySelectorAll('[data-map-button]').forEach(function (b) {
      b.addEventListener('click', function () {
        root.querySelectorAll('[data-map-button]').forEach(function (o) { o.classList.toggle('on', o === b); });
        const chosen = b.getAttribute('data-map-button');
        maps.forEach(function (m) { m.toggleAttribute('hidden', m.dataset.map !== chosen); });
        const legend = root.querySelector('.map-legend');
        if (legend) legend.textContent = b.getAttribute('data-legend');
      });
    });
    maps.forEach(function (m) {
      m.addEventListener('click', function (e) {
        const g = e.target.closest('g[data-index]');
        if (!g || !tree || !tree.inspReveal) return;
        const row = tree.inspReveal(g.getAttribute('data-index'));
        if (!row) return;
        root.querySelectorAll('tr.hl').forEach(function (r) { r.classList.remove('hl'); });
        row.classList.add('hl');
        row.scrollIntoView({block: 'center'});
      });
    });
    if (tree) {
      tree.addEventListener('mouseover', function (e) {
        const tr = e.target.closest('tr[data-index]');
        maps.forEach(function (m) {
          m.querySelectorAll('g.hl').forEach(function (g) { g.classList.remove('hl'); });
          if (tr && tr.dataset.kind !== 'own') {
            const g = m.querySelector('g[data-index="' + tr.dataset.index + '"]:not([data-own])');
            if (g) g.classList.add('hl');
          }
        });
      });
    }
  }
  document.querySelectorAll('.insp:not([data-ready])').forEach(wire);
})();
"""
