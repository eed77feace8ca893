// Couchfarm dispatch board ({db}_board): the hub's offers to workers (offer:{worker}) and
// its beat (hub:dispatcher). Only the hub writes here; each worker reads its own offer doc
// on a _doc_ids feed. Kept apart from the live database because every write to a
// database wakes every continuous feed on it: the board is written a few times a second
// at most, whatever the number of workers (hub/dispatch.py).
function (newDoc, oldDoc, userCtx, secObj) {
  var roles = userCtx.roles || [];
  if (roles.indexOf('_admin') !== -1) { return; }
  if (roles.indexOf('farm_admin') === -1) {
    throw({forbidden: 'the board is written by the hub (farm_admin) only'});
  }
  if (newDoc._deleted === true) { return; }
  if (newDoc._id === 'hub:dispatcher') {
    if (newDoc.type !== 'beat') { throw({forbidden: 'hub:dispatcher must be a beat'}); }
    return;
  }
  if (newDoc.type !== 'offer' || typeof newDoc.worker !== 'string' ||
      newDoc._id !== 'offer:' + newDoc.worker) {
    throw({forbidden: 'the board holds offer:{worker} documents and the hub beat only'});
  }
  if (!Array.isArray(newDoc.offers)) { throw({forbidden: 'offers must be a list'}); }
}
