// Live occurrences counted by [client, state, task]. With reduce=_count:
// group_level=2 gives a client's totals by state; group_level=3 splits them by task.
function (doc) {
  if (doc.type === 'occurrence') {
    emit([doc.client, doc.state, doc.task], 1);
  }
}
