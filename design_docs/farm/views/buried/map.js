// Buried occurrences across clients, by [client, task]: the ops page and 'hub kick'.
function (doc) {
  if (doc.type === 'occurrence' && doc.state === 'buried') {
    emit([doc.client, doc.task, doc.due_at], doc.reason || null);
  }
}
