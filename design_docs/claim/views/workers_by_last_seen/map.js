// Workers by their last heartbeat (hub time): "online" is last_seen within a minute.
function (doc) {
  if (doc.type === 'worker') {
    emit(doc.last_seen, {
      name: doc.name, version: doc.version, os: doc.os, state: doc.state,
      slots: doc.slots, tubes: doc.tubes, kinds: doc.kinds, current: doc.current,
      totals: doc.totals
    });
  }
}
