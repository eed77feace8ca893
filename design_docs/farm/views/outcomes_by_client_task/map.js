// Finished occurrences still in the live database by [client, task, status], valued by due
// time in epoch seconds. With reduce=_stats and group_level=3: how many of each outcome and
// the latest one's due time (the portal's dashboard). status: ok, error (a done occurrence's
// result), failed, missed, skipped, cancelled.
function (doc) {
  if (doc.type === 'occurrence') {
    var status = null;
    if (doc.state === 'done' && doc.result) {
      status = doc.result.status;
    } else if (doc.state === 'failed' || doc.state === 'missed' || doc.state === 'skipped' ||
               doc.state === 'cancelled' || doc.state === 'inconclusive') {
      status = doc.state;
    }
    if (status) {
      emit([doc.client, doc.task, status], Date.parse(doc.due_at) / 1000);
    }
  }
}
