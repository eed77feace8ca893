// Workers' reliability (hub:reliability:{worker}, kept by the hub's validator) by score,
// lowest first: the ops page's list, and the quarantine list workers read.
function (doc) {
  if (doc.type === 'reliability') {
    emit(doc.score, {
      worker: doc.worker, agree: doc.agree, disagree: doc.disagree,
      disagree_streak: doc.disagree_streak, quarantined: doc.quarantined,
      quarantined_at: doc.quarantined_at
    });
  }
}
