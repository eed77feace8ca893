// Archived results by [client, due_at]: a client's export across all its tasks.
function (doc) {
  if (doc.type === 'result') {
    emit([doc.client, doc.due_at], null);
  }
}
