// Occurrences in a final state, by when they ended: the archiver copies them to the
// month's results database and then removes them from the live database.
function (doc) {
  if (doc.type === 'occurrence' &&
      (doc.state === 'done' || doc.state === 'failed' || doc.state === 'missed' ||
       doc.state === 'skipped' || doc.state === 'cancelled' ||
       doc.state === 'inconclusive')) {
    emit(doc.updated_at, null);
  }
}
