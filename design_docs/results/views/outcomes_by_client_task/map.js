// Archived results by [client, task, status], valued by due time in epoch seconds. With
// reduce=_stats and group_level=3: how many of each outcome and the latest one's due time
// (the portal's dashboard: counts, success rate, last result in one query per month).
function (doc) {
  if (doc.type === 'result') {
    emit([doc.client, doc.task, doc.status], Date.parse(doc.due_at) / 1000);
  }
}
