// The workers' changes feed: what a worker needs to claim without reading the view.
// - occurrences of its tubes in any state but done/failed: ready (new work), or anything
//   else a ready one can turn into (leased: someone took it; missed, skipped, cancelled,
//   scheduled, buried: the hub took it back), so it leaves the local ready set at once.
//   done and failed only ever follow leased, which was already passed;
// - worker docs (who is online, for the rendezvous order that staggers idle workers).
// The tubes come as ?tubes=a,b; none means every tube.
function (doc, req) {
  if (doc.type === 'worker') {
    return true;
  }
  if (doc.type !== 'occurrence' || doc.state === 'done' || doc.state === 'failed') {
    return false;
  }
  var tubes = req.query && req.query.tubes;
  if (!tubes) {
    return true;
  }
  return tubes.split(',').indexOf(doc.tube) !== -1;
}
