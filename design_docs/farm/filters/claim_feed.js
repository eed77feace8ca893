// The workers' changes feed: what a worker needs to claim without reading the view.
// - occurrences of its tubes that are ready (new work) or leased (someone just took it, so
//   drop it from the local ready set);
// - worker docs (who is online, for the rendezvous order that staggers idle workers).
// The tubes come as ?tubes=a,b; none means every tube.
function (doc, req) {
  if (doc.type === 'worker') {
    return true;
  }
  if (doc.type !== 'occurrence' || (doc.state !== 'ready' && doc.state !== 'leased')) {
    return false;
  }
  var tubes = req.query && req.query.tubes;
  if (!tubes) {
    return true;
  }
  return tubes.split(',').indexOf(doc.tube) !== -1;
}
