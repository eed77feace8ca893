// Quorum occurrences still collecting (ready, quorum > 1), by when the hub must look at
// them again: each leased slot's expiry (the reaper expires it) and the quorum deadline
// (the validator decides with what it has). Value: what is due, 'slot' or 'deadline'.
function (doc) {
  if (doc.type === 'occurrence' && doc.state === 'ready' && doc.quorum > 1) {
    var slots = doc.slots || {};
    for (var name in slots) {
      if (slots.hasOwnProperty(name) && slots[name].state === 'leased') {
        emit(slots[name].expires_at, 'slot');
      }
    }
    if (doc.quorum_deadline) { emit(doc.quorum_deadline, 'deadline'); }
  }
}
