// Couchfarm monthly results databases (farm_results_YYYY_MM): written only by the hub's
// archiver (farm_admin): results (res:, written once) and per-task tallies (tally:).
// Read by the portal and by workers confirming their results.
// Workers put their results inside the occurrence they hold (live database), where the
// lease can be checked; a results database cannot see leases, so workers may not write it.
function (newDoc, oldDoc, userCtx, secObj) {
  var roles = userCtx.roles || [];
  if (roles.indexOf('_admin') !== -1) { return; }
  if (roles.indexOf('farm_admin') === -1) {
    throw({forbidden: 'results are written by the hub archiver (farm_admin) only'});
  }
  if (newDoc._deleted === true || newDoc._id.indexOf('_design/') === 0) { return; }
  // tally:{task}: the month's counts for one task, kept by the archiver (updated in place).
  if (newDoc.type === 'tally') {
    if (typeof newDoc.task !== 'string' || newDoc._id !== 'tally:' + newDoc.task) {
      throw({forbidden: '_id must be tally:' + newDoc.task});
    }
    if (typeof newDoc.client !== 'string' || newDoc.task.split(':')[1] !== newDoc.client) {
      throw({forbidden: 'tally.client must be the client named in its task id'});
    }
    if (typeof newDoc.statuses !== 'object' || newDoc.statuses === null) {
      throw({forbidden: 'a tally needs statuses'});
    }
    return;
  }
  if (newDoc.type !== 'result') {
    throw({forbidden: 'a results database holds only results and tallies'});
  }
  if (newDoc._id !== 'res:' + newDoc.occurrence) {
    throw({forbidden: '_id must be res:' + newDoc.occurrence});
  }
  if (typeof newDoc.client !== 'string' || newDoc.occurrence.split(':')[2] !== newDoc.client) {
    throw({forbidden: 'result.client must be the client named in its occurrence id'});
  }
  if (oldDoc && !oldDoc._deleted) {
    throw({forbidden: 'a result is written once; ' + newDoc._id + ' already exists'});
  }
}
