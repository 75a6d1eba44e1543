// Filters and sorting of the explanation cards. The state lives in the URL
// hash (#true=happy&correct=wrong&sort=p), so a filtered view can be linked.
(function () {
  var root = document.documentElement;
  var box = document.getElementById('cards');
  var fields = ['true', 'pred', 'correct', 'share', 'sort'];
  function control(name) { return document.getElementById('f-' + name); }

  function readHash() {
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ''));
    fields.forEach(function (name) {
      var el = control(name);
      if (!el) { return; }
      var v = params.get(name) || '';
      var known = Array.prototype.some.call(el.options, function (o) {
        return o.value === v;
      });
      el.value = known ? v : '';
    });
  }

  function writeHash() {
    var params = new URLSearchParams();
    fields.forEach(function (name) {
      var el = control(name);
      if (el && el.value) { params.set(name, el.value); }
    });
    var hash = params.toString();
    history.replaceState(null, '', hash ? '#' + hash : window.location.pathname);
  }

  function value(el, name) { return control(name) ? control(name).value : ''; }

  function number(card, key) {
    var v = parseFloat(card.getAttribute(key));
    return isNaN(v) ? -Infinity : v;
  }

  var original = box ? Array.prototype.slice.call(box.children) : [];

  function apply() {
    if (!box) { return; }
    var t = value(null, 'true'), p = value(null, 'pred');
    var c = value(null, 'correct'), s = value(null, 'share');
    var shown = 0;
    original.forEach(function (card) {
      var share = number(card, 'data-image-share');
      var ok = (!t || card.getAttribute('data-true') === t) &&
          (!p || card.getAttribute('data-pred') === p) &&
          (!c || card.getAttribute('data-correct') === (c === 'right' ? '1' : '0')) &&
          (!s || (s === 'image' ? share >= 0.5 : share < 0.5 && share > -Infinity));
      card.hidden = !ok;
      if (ok) { shown += 1; }
    });
    var order = original.slice();
    var key = value(null, 'sort');
    var attr = {p: 'data-p', gain: 'data-gain', image: 'data-image-share',
                speech: 'data-image-share'}[key];
    if (attr) {
      var sign = key === 'speech' ? 1 : -1;
      order.sort(function (a, b) { return sign * (number(a, attr) - number(b, attr)); });
    }
    var moved = order.some(function (card, i) { return box.children[i] !== card; });
    if (moved) {  // One re-insertion of all cards, only when the order changed.
      var frag = document.createDocumentFragment();
      order.forEach(function (card) { frag.appendChild(card); });
      box.appendChild(frag);
    }
    var label = document.getElementById('shown');
    if (label) { label.textContent = shown + ' of ' + original.length + ' shown'; }
    root.setAttribute('data-shown', String(shown));
  }

  // Audio players: instantiated from their templates near the viewport.
  function players(div) {
    var tpl = div.querySelector('template');
    if (tpl) { div.appendChild(tpl.content.cloneNode(true)); tpl.remove(); }
  }
  var pending = document.querySelectorAll('.audio');
  if ('IntersectionObserver' in window) {
    var watch = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) {
        if (e.isIntersecting) { players(e.target); watch.unobserve(e.target); }
      });
    }, {rootMargin: '800px'});
    Array.prototype.forEach.call(pending, function (d) { watch.observe(d); });
  } else {
    Array.prototype.forEach.call(pending, players);
  }

  fields.forEach(function (name) {
    var el = control(name);
    if (el) { el.addEventListener('change', function () { writeHash(); apply(); }); }
  });
  window.addEventListener('hashchange', function () { readHash(); apply(); });
  readHash();
  apply();
  root.setAttribute('data-script-ms', performance.now().toFixed(1));
  window.addEventListener('load', function () {
    root.setAttribute('data-load-ms', performance.now().toFixed(1));
  });
})();
