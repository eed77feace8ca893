// The portal's API tokens (hub:token:<sha256 of the secret>) by [scope, created_at]; scope
// is 'client:NAME' or 'admin:USER'. The secret itself is never stored.
function (doc) {
  if (doc.type === 'hub' && doc.kind === 'api_token') {
    emit([doc.scope, doc.created_at], {name: doc.name, hint: doc.hint, user: doc.user});
  }
}
