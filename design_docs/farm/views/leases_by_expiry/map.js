// Leased occurrences by lease expiry: the reaper reads endkey=<hub now>.
function (doc) {
  if (doc.type === 'occurrence' && doc.state === 'leased' && doc.lease) {
    emit(doc.lease.expires_at, doc.lease.worker);
  }
}
