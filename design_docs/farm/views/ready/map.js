// Claimable occurrences per tube, in turn order.
// queue_at = due time + priority aging + per-client fair spacing, stamped by the hub, so
// sorting by it gives priority, starvation-free aging and fair share with no extra writes.
// Workers read the first K rows with include_docs and claim with the row's _rev.
function (doc) {
  if (doc.type === 'occurrence' && doc.state === 'ready') {
    emit([doc.tube, doc.queue_at], null);
  }
}
