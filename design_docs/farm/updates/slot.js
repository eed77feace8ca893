// A quorum slot write (hub/protocol/quorum.py, desktop_worker/slots.py, decision 17):
// PUT _design/farm/_update/slot/{occurrence id} with {"slot": {...}, "updated_at": "..."}
// puts the caller's slot, keyed by its own user name, onto the *current* revision and
// saves it. k workers share one document, so a worker's slot write after a sibling's
// used to cost a 409, a GET and a second PUT; here the server reads and writes in one
// request. It decides nothing: the save is checked by validate_doc_update against the
// revision this function read (own slot only, once ever, while fewer than k are live,
// hub times), and a write that landed between that read and the save makes it a 409.
// ES5 only (CouchDB 3 may run SpiderMonkey 1.8.5).
function (doc, req) {
  function answer(code, error, reason) {
    return [null, {code: code, json: {error: error, reason: reason}}];
  }
  var name = req.userCtx && req.userCtx.name;
  if (!name) { return answer(401, 'unauthorized', 'a slot write needs a worker session'); }
  if (!doc) { return answer(404, 'not_found', 'no occurrence ' + req.id); }
  var body;
  try { body = JSON.parse(req.body); } catch (e) { body = null; }
  if (body === null || typeof body !== 'object' || typeof body.slot !== 'object' ||
      body.slot === null || typeof body.updated_at !== 'string') {
    return answer(400, 'bad_request', 'a slot write carries {"slot": {...}, "updated_at": "..."}');
  }
  if (typeof doc.slots !== 'object' || doc.slots === null) {
    return answer(403, 'forbidden', 'occurrence ' + doc._id + ' is not a quorum occurrence');
  }
  doc.slots[name] = body.slot;
  doc.updated_at = body.updated_at;
  return [doc, {json: {ok: true, id: doc._id}}];
}
