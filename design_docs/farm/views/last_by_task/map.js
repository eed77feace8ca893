// Latest due time per task, as epoch seconds (reduce=_stats, group=true: use .max).
// A restarted hub resumes each task after its last materialized occurrence.
function (doc) {
  if (doc.type === 'occurrence') {
    emit(doc.task, Date.parse(doc.due_at) / 1000);
  }
}
