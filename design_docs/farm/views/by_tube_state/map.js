// Queue depth: live occurrences counted by [tube, state] (reduce=_count, group=true).
function (doc) {
  if (doc.type === 'occurrence') {
    emit([doc.tube, doc.state], 1);
  }
}
