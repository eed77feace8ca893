// Archived results counted by [client, task, status] (reduce=_count): success rates.
function (doc) {
  if (doc.type === 'result') {
    emit([doc.client, doc.task, doc.status], 1);
  }
}
