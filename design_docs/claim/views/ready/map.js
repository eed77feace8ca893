// Claimable occurrences per tube, in turn order.
// queue_at = due time + priority aging + per-client fair spacing, stamped by the hub, so
// sorting by it gives priority, starvation-free aging and fair share with no extra writes.
// Workers read the first K rows with include_docs and claim with the row's _rev.
// A quorum occurrence (quorum > 1) stays ready while it collects results; it is listed
// while fewer than quorum of its slots are live (leased, done, error).
function (doc) {
  if (doc.type === 'occurrence' && doc.state === 'ready') {
    if (doc.quorum > 1) {
      var live = 0, slots = doc.slots || {};
      for (var name in slots) {
        if (slots.hasOwnProperty(name) && (slots[name].state === 'leased' ||
            slots[name].state === 'done' || slots[name].state === 'error')) {
          live += 1;
        }
      }
      if (live >= doc.quorum) { return; }
    }
    emit([doc.tube, doc.queue_at], null);
  }
}
