// Claimable occurrences per tube, split into 64 buckets by a hash of the id, each bucket in
// turn order: key [tube, bucket, queue_at]. In a backlog with no dispatcher each worker
// reads only the buckets it owns (rendezvous over the online workers), so what it reads
// per claim does not grow with the number of workers (docs/DECISIONS.md decision 18).
// The hash is FNV-1a over the id's UTF-16 code units, folded; hub/protocol/buckets.py
// computes the same one. ES5 only (the multiply is spelled as shifts to stay exact).
// A quorum occurrence is listed while fewer than quorum of its slots are live, as in `ready`.
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
    var id = doc._id, h = 0x811c9dc5;
    for (var i = 0; i < id.length; i++) {
      h ^= id.charCodeAt(i);
      h = (h + (h << 1) + (h << 4) + (h << 7) + (h << 8) + (h << 24)) >>> 0;
    }
    emit([doc.tube, ((h ^ (h >>> 16)) >>> 0) % 64, doc.queue_at], null);
  }
}
