// Occurrences that have not ended (scheduled, ready, leased, buried), by task: what the
// overlap policy and the misfire coalescing look at.
function (doc) {
  if (doc.type === 'occurrence' &&
      (doc.state === 'scheduled' || doc.state === 'ready' || doc.state === 'leased' ||
       doc.state === 'buried')) {
    emit([doc.task, doc.due_at], doc.state);
  }
}
