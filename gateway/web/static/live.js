// Keeps a page current without a reload: the server's event stream says when the data
// has moved on from the version the page was built from; the page is then fetched again
// and each of its live parts ([data-live], by id) replaced, unless the person is using
// it: its focus is inside, or they changed one of its fields (a choice in a dropdown
// not yet sent is theirs, not the server's).
"use strict";

(() => {
  const since = document.body.dataset.version;
  if (!since) return;
  const GAP = 1000; // ms between two fetches: a busy desk costs each page one a second
  let fetching = false;
  let again = false;
  let last = 0;

  async function refresh() {
    if (fetching) { again = true; return; }
    const wait = last + GAP - Date.now();
    if (wait > 0) { fetching = true; setTimeout(() => { fetching = false; refresh(); }, wait); return; }
    fetching = true;
    last = Date.now();
    try {
      const response = await fetch(location.href, { headers: { Accept: "text/html", "X-Live-Refresh": "1" } });
      if (!response.ok || response.redirected) return; // signed out: leave the page be
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const part of document.querySelectorAll("[data-live]")) {
        const next = fresh.getElementById(part.id);
        if (next && !part.contains(document.activeElement) && !part.hasAttribute("data-touched")) {
          part.replaceWith(next);
        }
      }
    } finally {
      fetching = false;
      if (again) { again = false; refresh(); }
    }
  }

  for (const kind of ["input", "change"]) {
    document.addEventListener(kind, (event) => {
      event.target.closest("[data-live]")?.setAttribute("data-touched", "");
    });
  }

  const stream = new EventSource("/live?since=" + encodeURIComponent(since));
  stream.addEventListener("changed", refresh);
})();
