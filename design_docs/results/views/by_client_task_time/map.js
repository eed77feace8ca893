// Archived results by [client, task, due_at]: paginated history and streamed export.
function (doc) {
  if (doc.type === 'result') {
    emit([doc.client, doc.task, doc.due_at], {
      status: doc.status, attempt: doc.attempt, worker: doc.worker,
      duration_ms: doc.duration_ms, latency_ms: doc.latency_ms
    });
  }
}
