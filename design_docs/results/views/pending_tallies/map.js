// Tally batches announced but not yet folded, by announcement time; value: the batch.
// The archiver folds those older than a few minutes (their writer died mid-batch).
function (doc) {
  if (doc.type === 'tally' && doc.pending) {
    for (var batch in doc.pending) {
      emit(doc.pending[batch].at, batch);
    }
  }
}
