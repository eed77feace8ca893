// Tasks by [client, slug], with what the dashboard lists.
function (doc) {
  if (doc.type === 'task') {
    emit([doc.client, doc.slug], {
      kind: doc.kind, paused: doc.paused, tube: doc.tube, priority: doc.priority
    });
  }
}
