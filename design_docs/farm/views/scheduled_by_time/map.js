// Occurrences waiting for their not_before (retry backoff): the promoter reads
// endkey=<hub now> and turns them ready.
function (doc) {
  if (doc.type === 'occurrence' && doc.state === 'scheduled') {
    emit(doc.not_before, null);
  }
}
