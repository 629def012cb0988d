// Keeps a page current without a reload: the server's event stream says when the data
// has moved on from the version the page was built from; the page is then fetched again
// and each of its live parts ([data-live], by id) replaced, unless the person is using
// it: its focus is inside, or they changed one of its fields (a choice in a dropdown
// not yet sent is theirs, not the server's). A part passed over is caught up once they
// leave it as it was.
"use strict";

(() => {
  const since = document.body.dataset.version;
  if (!since) return;
  const GAP = 1000; // ms between two fetches: a busy desk costs each page one a second
  let fetching = false;
  let again = false;
  let last = 0;
  let behind = false; // a part was passed over: fetch again when it is free

  const touched = (part) =>
    [...part.querySelectorAll("input, select, textarea")].some((field) =>
      field.tagName === "SELECT"
        ? [...field.options].some((option) => option.selected !== option.defaultSelected)
        : field.type !== "hidden" && field.value !== field.defaultValue);

  async function refresh() {
    if (fetching) { again = true; return; }
    const wait = last + GAP - Date.now();
    if (wait > 0) { fetching = true; setTimeout(() => { fetching = false; refresh(); }, wait); return; }
    fetching = true;
    last = Date.now();
    try {
      const response = await fetch(location.href, {
        headers: { Accept: "text/html", "X-Live-Refresh": "1" },
      });
      if (response.redirected) return; // signed out: leave the page be
      if (!response.ok) { again = true; return; } // the store busy: once more, after GAP
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      behind = false;
      for (const part of document.querySelectorAll("[data-live]")) {
        const next = fresh.getElementById(part.id);
        if (!next) continue;
        if (part.contains(document.activeElement) || touched(part)) behind = true;
        else part.replaceWith(next);
      }
    } catch {
      again = true; // the network: once more, after GAP
    } finally {
      fetching = false;
      if (again) { again = false; refresh(); }
    }
  }

  // Leaving a part passed over, as it was: catch it up.
  document.addEventListener("focusout", (event) => {
    const part = event.target.closest("[data-live]");
    if (behind && part) setTimeout(() => { if (!part.contains(document.activeElement)) refresh(); }, 0);
  });

  // The browser reconnects a dropped stream by itself, unless the server answered it with
  // an error (a restart behind a proxy): then a new stream, from the last version seen.
  let seen = since;
  function listen() {
    const stream = new EventSource("/live?since=" + encodeURIComponent(seen));
    stream.addEventListener("changed", (event) => { seen = event.lastEventId || seen; refresh(); });
    stream.addEventListener("error", () => {
      if (stream.readyState === EventSource.CLOSED) setTimeout(() => { listen(); refresh(); }, 5000);
    });
  }
  listen();
})();
