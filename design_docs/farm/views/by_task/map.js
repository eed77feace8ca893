// Every live occurrence of a task in due order, with its state: the task page's recent
// history and the overlap policy's "is a run of this task still going?".
function (doc) {
  if (doc.type === 'occurrence') {
    emit([doc.task, doc.due_at], doc.state);
  }
}
