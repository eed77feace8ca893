// Couchfarm live database: who may write what, and what a well-formed document is.
//
// Roles (set by `hub init`):
//   _admin       server admins: replication, `hub init`, `hub recover`. Not checked here,
//                because replicated revisions must be accepted as they are.
//   farm_admin   the hub service and operators: any document, but it must be well formed.
//   farm_worker  volunteer workers: claim a ready occurrence, then touch, finish, fail or
//                release only the occurrences they hold; write their own worker doc.
// Everyone else is refused. Clients never write here: the portal writes for them.
//
// ES5 only: CouchDB 3 may run SpiderMonkey 1.8.5.
function (newDoc, oldDoc, userCtx, secObj) {
  var roles = userCtx.roles || [];
  var name = userCtx.name;
  function has(role) { return roles.indexOf(role) !== -1; }
  if (has('_admin')) { return; }
  var isAdmin = has('farm_admin');
  var isWorker = has('farm_worker');
  if (!isAdmin && !isWorker) {
    throw({unauthorized: 'only farm_admin and farm_worker users may write to this database'});
  }
  function deny(message) { throw({forbidden: message}); }

  var MAX_DOC_BYTES = 262144;
  var WIRE_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
  var NAME = /^[a-z0-9][a-z0-9_-]{0,39}$/;
  var SLUG = /^[a-z0-9][a-z0-9_-]{0,63}$/;
  var KIND = /^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$/;
  var TUBE = /^[a-z0-9][a-z0-9_.-]{0,63}$/;
  var STATES = ['scheduled', 'ready', 'leased', 'done', 'failed', 'buried', 'missed',
                'skipped', 'cancelled', 'inconclusive'];
  var FINAL = ['done', 'failed', 'missed', 'skipped', 'cancelled', 'inconclusive'];
  var MAX_ERRORS = 20;
  var id = newDoc._id;

  // ------------------------------------------------------------ helpers
  function isString(v) { return typeof v === 'string'; }
  function isInt(v, lo, hi) {
    return typeof v === 'number' && Math.floor(v) === v && v >= lo && v <= hi;
  }
  function isObject(v) {
    return v !== null && typeof v === 'object' && Object.prototype.toString.call(v) !== '[object Array]';
  }
  function isArray(v) { return Object.prototype.toString.call(v) === '[object Array]'; }
  function check(cond, message) { if (!cond) { deny(message); } }
  function time(v) { return isString(v) && WIRE_TIME.test(v); }
  // Deep equality that ignores key order (clients may re-serialize documents).
  function same(a, b) {
    if (a === b) { return true; }
    if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') {
      return false;
    }
    if (isArray(a) !== isArray(b)) { return false; }
    var keys = [], k;
    for (k in a) { if (a.hasOwnProperty(k)) { keys.push(k); } }
    for (k in b) { if (b.hasOwnProperty(k) && !a.hasOwnProperty(k)) { return false; } }
    for (var i = 0; i < keys.length; i++) {
      if (!b.hasOwnProperty(keys[i]) || !same(a[keys[i]], b[keys[i]])) { return false; }
    }
    return true;
  }
  function idStamp(wire) {
    // '2026-12-01T00:01:00.000Z' -> '20261201T000100Z'
    return wire.substring(0, 4) + wire.substring(5, 7) + wire.substring(8, 10) + 'T' +
      wire.substring(11, 13) + wire.substring(14, 16) + wire.substring(17, 19) + 'Z';
  }
  function depth(v, limit) {
    if (limit < 0) { return limit; }
    if (v !== null && typeof v === 'object') {
      var worst = limit;
      for (var k in v) {
        if (v.hasOwnProperty(k)) {
          var d = depth(v[k], limit - 1);
          if (d < worst) { worst = d; }
          if (worst < 0) { return worst; }
        }
      }
      return worst;
    }
    return limit;
  }

  // ------------------------------------------------------------ any document
  check(isString(id) && id.length <= 400, '_id must be a string of at most 400 characters');
  if (newDoc._deleted === true) {
    if (isAdmin) { return; }
    if (id === 'worker:' + name) { return; }
    deny('a worker may delete only its own worker document (worker:' + name + '), not ' + id);
  }
  if (id.indexOf('_design/') === 0) {
    if (!isAdmin) { deny('only farm_admin may write design documents'); }
    return;
  }
  var size = JSON.stringify(newDoc).length;
  check(size <= MAX_DOC_BYTES,
          'document is ' + size + ' bytes of JSON; the limit is ' + MAX_DOC_BYTES);
  check(depth(newDoc, 24) >= 0, 'document is nested deeper than 24 levels');

  var prefix = id.split(':')[0];
  var expectedType = {task: 'task', occ: 'occurrence', worker: 'worker', hub: 'hub'}[prefix];
  // A worker's reliability (quorum runs, hub/protocol/quorum.py) is a hub document too.
  if (id.indexOf('hub:reliability:') === 0) { expectedType = 'reliability'; }
  check(expectedType !== undefined,
          'unknown document id ' + JSON.stringify(id.substring(0, 60)) +
          ': ids start with task:, occ:, worker: or hub:');
  check(newDoc.type === expectedType,
          'a document with id ' + prefix + ':... must have type "' + expectedType + '"');
  if (oldDoc && !oldDoc._deleted && oldDoc.type !== newDoc.type) {
    deny('type cannot change from ' + oldDoc.type + ' to ' + newDoc.type);
  }

  // ------------------------------------------------------------ hub metadata
  if (expectedType === 'hub' || expectedType === 'reliability') {
    check(isAdmin, 'only farm_admin may write hub documents');
    return;
  }

  // ------------------------------------------------------------ tasks
  if (expectedType === 'task') {
    check(isAdmin, 'only farm_admin (the hub or the portal) may create or edit tasks; ' +
            'a worker may not');
    check(isString(newDoc.client) && NAME.test(newDoc.client), 'task.client is not a valid name');
    check(isString(newDoc.slug) && SLUG.test(newDoc.slug), 'task.slug is not a valid slug');
    check(id === 'task:' + newDoc.client + ':' + newDoc.slug,
            '_id must be task:' + newDoc.client + ':' + newDoc.slug);
    check(isString(newDoc.kind) && KIND.test(newDoc.kind), 'task.kind is not a valid kind name');
    check(isObject(newDoc.schedule), 'task.schedule must be an object');
    check(isObject(newDoc.input), 'task.input must be an object');
    check(isInt(newDoc.priority, 0, 4294967295), 'task.priority must be an integer 0..4294967295');
    check(isString(newDoc.tube) && TUBE.test(newDoc.tube), 'task.tube is not a valid tube name');
    check(isInt(newDoc.ttr, 1, 86400), 'task.ttr must be 1..86400 seconds');
    check(isInt(newDoc.max_attempts, 1, 100), 'task.max_attempts must be 1..100');
    check(typeof newDoc.paused === 'boolean', 'task.paused must be true or false');
    if (oldDoc && !oldDoc._deleted) {
      check(oldDoc.client === newDoc.client, 'a task cannot move to another client');
    }
    return;
  }

  // ------------------------------------------------------------ worker documents
  if (expectedType === 'worker') {
    check(isString(newDoc.name) && NAME.test(newDoc.name), 'worker.name is not a valid name');
    check(id === 'worker:' + newDoc.name, '_id must be worker:' + newDoc.name);
    if (!isAdmin) {
      check(newDoc.name === name,
              'worker ' + name + ' may write only worker:' + name + ', not ' + id);
    }
    check(time(newDoc.last_seen), 'worker.last_seen must be a hub time like 2026-12-01T00:00:00.000Z');
    check(isArray(newDoc.tubes) && newDoc.tubes.length <= 50, 'worker.tubes must be a list of at most 50');
    check(isArray(newDoc.current) && newDoc.current.length <= 256, 'worker.current must be a list');
    check(isInt(newDoc.slots, 1, 256), 'worker.slots must be 1..256');
    return;
  }

  // ------------------------------------------------------------ occurrences: shape
  var o = newDoc;
  check(isString(o.task) && o.task.indexOf('task:') === 0, 'occurrence.task must be a task id');
  check(isString(o.client) && NAME.test(o.client), 'occurrence.client is not a valid name');
  check(o.task.split(':')[1] === o.client,
          'occurrence.client must be the client of its task (' + o.task.split(':')[1] + ')');
  check(time(o.due_at), 'occurrence.due_at must be a hub time like 2026-12-01T00:00:00.000Z');
  check(id === 'occ:' + o.task + ':' + idStamp(o.due_at),
          '_id must be occ:' + o.task + ':' + idStamp(o.due_at) + ' for this task and due_at');
  check(STATES.indexOf(o.state) !== -1, 'occurrence.state must be one of ' + STATES.join(', '));
  check(isString(o.kind) && KIND.test(o.kind), 'occurrence.kind is not a valid kind name');
  check(isString(o.tube) && TUBE.test(o.tube), 'occurrence.tube is not a valid tube name');
  check(isInt(o.priority, 0, 4294967295), 'occurrence.priority must be an integer 0..4294967295');
  check(isInt(o.ttr, 1, 86400), 'occurrence.ttr must be 1..86400 seconds');
  check(isInt(o.max_attempts, 1, 100), 'occurrence.max_attempts must be 1..100');
  check(isInt(o.attempt, 0, 100), 'occurrence.attempt must be an integer 0..100');
  check(o.attempt <= o.max_attempts || (o.state !== 'ready' && o.state !== 'leased'),
        'a ready or leased occurrence cannot be past max_attempts (' + o.max_attempts + ')');
  check(time(o.not_before), 'occurrence.not_before must be a hub time');
  check(o.queue_at === undefined || time(o.queue_at), 'occurrence.queue_at must be a hub time');
  check(isObject(o.input), 'occurrence.input must be an object');
  check(isArray(o.errors) && o.errors.length <= MAX_ERRORS,
          'occurrence.errors must be a list of at most ' + MAX_ERRORS);
  var leased = o.state === 'leased';
  check(leased === isObject(o.lease), 'a lease is present exactly when the state is leased');
  if (leased) {
    check(isString(o.lease.worker) && NAME.test(o.lease.worker), 'lease.worker is not a valid name');
    check(time(o.lease.expires_at) && time(o.lease.claimed_at),
            'lease.claimed_at and lease.expires_at must be hub times');
  }
  var QUORUM = isInt(o.quorum, 2, 7);
  check(o.quorum === undefined || o.quorum === null || QUORUM, 'occurrence.quorum must be 2..7');
  check(QUORUM || ((o.slots === undefined || o.slots === null) &&
                   (o.validation === undefined || o.validation === null)),
        'slots and validation belong to quorum occurrences (quorum 2..7)');
  if (QUORUM) {
    check(isObject(o.slots), 'occurrence.slots must be an object keyed by worker name');
    check(o.state !== 'leased', 'a quorum occurrence is never leased as a whole; its slots are');
    check(o.state !== 'inconclusive' || (isObject(o.validation) &&
            o.validation.outcome === 'inconclusive'),
          'an inconclusive occurrence carries validation.outcome inconclusive');
  } else {
    check(o.state !== 'inconclusive', 'only a quorum occurrence can be inconclusive');
  }
  var done = o.state === 'done';
  check(done === isObject(o.result), 'a result is present exactly when the state is done');
  if (done) {
    check(o.result.status === 'ok' || o.result.status === 'error',
            'result.status must be ok or error');
    check(time(o.result.started_at) && time(o.result.finished_at),
            'result.started_at and result.finished_at must be hub times');
  }

  if (isAdmin) {
    // The one exception: the hub voids the result of a quarantined worker on quorum-1 work
    // (hub/validator.py, hub/protocol/quorum.py void_result): done back to ready.
    var voided = oldDoc && oldDoc.state === 'done' && o.state === 'ready' &&
                 isString(o.reason) && o.reason.indexOf('voided: ') === 0 && !QUORUM;
    if (oldDoc && !oldDoc._deleted && FINAL.indexOf(oldDoc.state) !== -1 && !voided) {
      check(oldDoc.state === o.state,
              'occurrence ' + id + ' ended ' + oldDoc.state + '; a final state never changes');
    }
    return;
  }

  // ------------------------------------------------------------ occurrences: worker moves
  check(oldDoc && !oldDoc._deleted,
          'workers cannot create occurrences; the hub materializes them');
  var IMMUTABLE = ['task', 'client', 'kind', 'input', 'tube', 'priority', 'ttr', 'max_attempts',
                   'due_at', 'created_at', 'queue_at'];
  for (var i = 0; i < IMMUTABLE.length; i++) {
    var field = IMMUTABLE[i];
    check(same(o[field], oldDoc[field]), 'a worker cannot change occurrence.' + field);
  }
  var heldByMe = oldDoc.state === 'leased' && oldDoc.lease && oldDoc.lease.worker === name;
  // Worker-written times must be hub time: within CLOCK_SLACK of this server's clock, and
  // a lease may run at most one TTR (plus slack) past now. Replicated revisions are
  // written by _admin and return above, so this time check never blocks replication.
  var CLOCK_SLACK = 300000;
  var SUPERSEDE_WINDOW = 30 * 60 * 1000;  // ms: how long a done result may be replaced
  var serverNow = new Date().getTime();
  function nearNow(t) { return Math.abs(Date.parse(t) - serverNow) <= CLOCK_SLACK; }
  check(time(o.updated_at) && nearNow(o.updated_at),
        'occurrence.updated_at must be hub time (the server says ' + new Date(serverNow).toISOString() + ')');
  // Quorum runs (hub/protocol/quorum.py): a worker writes only its own slot.
  if (isInt(oldDoc.quorum, 2, 7)) { return slotMove(); }
  check(!QUORUM, 'a worker cannot make occurrence ' + id + ' a quorum occurrence');
  check(same(o.slots, oldDoc.slots) && same(o.validation, oldDoc.validation),
        'a worker cannot change occurrence.slots or occurrence.validation');
  if (o.state === 'leased') {
    check(Date.parse(o.lease.expires_at) <= serverNow + o.ttr * 1000 + CLOCK_SLACK,
          'lease.expires_at may be at most one ttr (' + o.ttr + ' s) after now');
  }

  function slotMove() {
    // k workers share one document: each may (a) add the slot keyed by its own name when it
    // has none (an expired or void slot of its own still counts: never a second one) and
    // fewer than quorum are live, or (b) change its own leased slot (touch, progress,
    // finish with its result, void it), and nothing else in the document.
    var LIVE = ['leased', 'done', 'error'];
    var key, old = oldDoc.slots || {}, now = o.slots || {}, live = 0;
    check(oldDoc.state === 'ready',
          'occurrence ' + id + ' is ' + oldDoc.state + '; its quorum is decided');
    for (key in o) {
      if (o.hasOwnProperty(key) && key.charAt(0) !== '_' && key !== 'slots' &&
          key !== 'updated_at') {
        check(same(o[key], oldDoc[key]),
              'a worker may change only its own slot of ' + id + ', not occurrence.' + key);
      }
    }
    for (key in oldDoc) {
      if (oldDoc.hasOwnProperty(key) && key.charAt(0) !== '_' && !o.hasOwnProperty(key)) {
        deny('a worker may change only its own slot of ' + id + ', not remove occurrence.' + key);
      }
    }
    for (key in old) {
      if (old.hasOwnProperty(key)) {
        if (LIVE.indexOf(old[key].state) !== -1) { live += 1; }
        if (key !== name) {
          check(now.hasOwnProperty(key) && same(now[key], old[key]),
                'worker ' + name + ' may not change the slot of ' + key + ' in ' + id);
        }
      }
    }
    for (key in now) {
      if (now.hasOwnProperty(key) && key !== name) {
        check(old.hasOwnProperty(key),
              'worker ' + name + ' may not add a slot for ' + key + ' in ' + id);
      }
    }
    var mine = now[name], had = old[name];
    check(isObject(mine), 'worker ' + name + ' may not remove its slot of ' + id);
    check(mine.worker === name, 'slot ' + name + ' must name worker ' + name);
    check(time(mine.claimed_at) && time(mine.expires_at),
          'slot.claimed_at and slot.expires_at must be hub times');
    check(Date.parse(mine.expires_at) <= serverNow + o.ttr * 1000 + CLOCK_SLACK,
          'slot.expires_at may be at most one ttr (' + o.ttr + ' s) after now');
    if (!had) {  // claim a slot
      check(live < o.quorum, 'all ' + o.quorum + ' slots of ' + id + ' are taken');
      check(mine.state === 'leased', 'a new slot must be leased');
      check(!mine.result, 'a new slot carries no result');
      check(nearNow(mine.claimed_at), 'slot.claimed_at must be hub time');
      check(Date.parse(mine.claimed_at) >= Date.parse(oldDoc.not_before) - 1000,
            'occurrence ' + id + ' may not start before ' + oldDoc.not_before);
      return;
    }
    check(had.state === 'leased',
          'worker ' + name + ' already has a slot of ' + id + ' (' + had.state +
          '); one slot per worker, ever');
    check(mine.claimed_at === had.claimed_at, 'a slot cannot change its claimed_at');
    if (mine.state === 'leased' || mine.state === 'void') {  // touch, release
      check(!mine.result, 'only a finished slot carries a result');
      return;
    }
    check(mine.state === 'done' || mine.state === 'error',
          'a worker moves its slot only to leased, done, error or void, not ' + mine.state);
    var res = mine.result;
    check(isObject(res), 'a finished slot carries its result');
    check(res.worker === name, 'slot result.worker must be ' + name);
    check(res.status === (mine.state === 'done' ? 'ok' : 'error'),
          'a ' + mine.state + ' slot carries a result with status ' +
          (mine.state === 'done' ? 'ok' : 'error'));
    check(res.attempt === oldDoc.attempt + 1, 'slot result.attempt must be ' + (oldDoc.attempt + 1));
    check(time(res.started_at) && time(res.finished_at) && res.started_at <= res.finished_at,
          'slot result.started_at and finished_at must be hub times, in order');
    check(Date.parse(res.finished_at) <= serverNow + CLOCK_SLACK,
          'slot result.finished_at must be hub time, not in the future');
  }

  if (oldDoc.state === 'ready') {
    check(o.state === 'leased', 'a worker may only claim a ready occurrence (state leased)');
    check(o.lease.worker === name,
            'a claim must name the claiming worker (' + name + ') in lease.worker');
    check(o.attempt === oldDoc.attempt + 1, 'a claim counts one more attempt');
    check(o.attempt <= o.max_attempts, 'no attempts left on ' + id);
    check(nearNow(o.lease.claimed_at), 'lease.claimed_at must be hub time');
    // Ready ahead of time (materialized before due, or a retry's backoff): not yet.
    // (1 s: the resolution of two clients' estimates of this clock, hub/states.py)
    check(Date.parse(o.lease.claimed_at) >= Date.parse(oldDoc.not_before) - 1000,
          'occurrence ' + id + ' may not start before ' + oldDoc.not_before);
    check(same(o.errors, oldDoc.errors), 'a claim cannot change the error history');
    return;
  }
  if (oldDoc.state === 'done' && o.state === 'done') {  // supersede: first finished wins
    // After a failover the survivor may hold a later-finished run of an occurrence whose
    // earlier result the dead primary accepted (201) but never replicated. The worker that
    // ran it kept it in its spool and may put it back: only its own result, only one that
    // finished first (finish time, then worker name: hub/resolver.py result_order), and
    // nothing else in the document changes. The replaced result is logged by the worker.
    var r = o.result, was = oldDoc.result;
    check(r.worker === name, 'result.worker must be ' + name + ', who is writing');
    check(r.finished_at < was.finished_at ||
            (r.finished_at === was.finished_at && r.worker < was.worker),
          'occurrence ' + id + ' is done; a worker may replace its result only with one ' +
          'that finished first (the stored one finished ' + was.finished_at + ')');
    check(r.started_at <= r.finished_at, 'result.started_at must not be after result.finished_at');
    // A failover's rescue comes within minutes; an occurrence kept live as the newest of its
    // task must not stay open to replacement for good.
    check(Date.parse(was.finished_at) >= serverNow - SUPERSEDE_WINDOW,
          'the result of ' + id + ' is older than ' + SUPERSEDE_WINDOW / 60000 +
          ' minutes; it can no longer be replaced');
    check(Date.parse(r.finished_at) <= serverNow + CLOCK_SLACK,
          'result.finished_at must be hub time, not in the future');
    check(isInt(r.attempt, 1, o.attempt), 'result.attempt must be 1..' + o.attempt);
    var k;
    for (k in o) {
      if (o.hasOwnProperty(k) && k !== '_rev' && k !== '_revisions' && k !== 'result' &&
          k !== 'updated_at') {
        check(same(o[k], oldDoc[k]), 'replacing a result cannot change occurrence.' + k);
      }
    }
    for (k in oldDoc) {
      if (oldDoc.hasOwnProperty(k) && k.charAt(0) !== '_' && !o.hasOwnProperty(k)) {
        deny('replacing a result cannot remove occurrence.' + k);
      }
    }
    return;
  }
  var RESTORABLE = ['missed', 'skipped', 'cancelled', 'failed', 'buried'];
  if (o.state === 'done' && RESTORABLE.indexOf(oldDoc.state) !== -1) {  // restore
    // A server acknowledged this worker's result (201) and was lost before replicating it;
    // the survivor meanwhile ended its copy without a result. Had the lost revision
    // replicated, the resolver would keep the done one (hub/protocol/states.py
    // PROGRESS_RANK), so the worker may put its own run back: only its own, only a recent
    // one, and nothing else in the document changes (hub/protocol/states.py restore).
    var run = o.result;
    check(run.worker === name, 'result.worker must be ' + name + ', who is writing');
    check(run.started_at <= run.finished_at,
          'result.started_at must not be after result.finished_at');
    check(Date.parse(run.finished_at) <= serverNow + CLOCK_SLACK,
          'result.finished_at must be hub time, not in the future');
    check(Date.parse(run.finished_at) >= serverNow - SUPERSEDE_WINDOW,
          'the run of ' + id + ' finished more than ' + SUPERSEDE_WINDOW / 60000 +
          ' minutes ago; it can no longer be restored over ' + oldDoc.state);
    check(isInt(run.attempt, 1, o.max_attempts), 'result.attempt must be 1..' + o.max_attempts);
    check(o.attempt === Math.max(oldDoc.attempt, run.attempt),
          'a restore keeps the larger attempt (' + Math.max(oldDoc.attempt, run.attempt) + ')');
    check(!o.lease && !o.progress, 'a restored occurrence holds no lease and no progress');
    var key;
    for (key in o) {
      if (o.hasOwnProperty(key) && key.charAt(0) !== '_' && key !== 'result' &&
          key !== 'state' && key !== 'attempt' && key !== 'updated_at' && key !== 'reason' &&
          key !== 'progress' && key !== 'lease') {
        check(same(o[key], oldDoc[key]), 'a restore cannot change occurrence.' + key);
      }
    }
    for (key in oldDoc) {
      if (oldDoc.hasOwnProperty(key) && key.charAt(0) !== '_' && key !== 'reason' &&
          key !== 'progress' && key !== 'lease' && !o.hasOwnProperty(key)) {
        deny('a restore cannot remove occurrence.' + key);
      }
    }
    return;
  }
  check(oldDoc.state === 'leased',
          'occurrence ' + id + ' is ' + oldDoc.state + '; a worker can act only on ready ' +
          'occurrences or on ones it holds');
  check(heldByMe, 'occurrence ' + id + ' is leased by ' + oldDoc.lease.worker + ', not ' + name);

  if (o.state === 'leased') {  // touch
    check(o.lease.worker === name, 'a worker cannot hand its lease to ' + o.lease.worker);
    check(o.lease.claimed_at === oldDoc.lease.claimed_at, 'a touch cannot change lease.claimed_at');
    // A claim a cluster took on fewer copies than a majority is abandoned: it never runs,
    // and stays abandoned (hub/protocol/states.py abandon).
    check(o.lease.abandoned === undefined || o.lease.abandoned === true,
          'lease.abandoned can only be true');
    check(!oldDoc.lease.abandoned || o.lease.abandoned === true,
          'an abandoned claim stays abandoned');
    check(o.attempt === oldDoc.attempt, 'a touch cannot change the attempt');
    check(same(o.errors, oldDoc.errors), 'a touch cannot change the error history');
    return;
  }
  if (o.state === 'done') {  // finish
    check(!oldDoc.lease.abandoned, 'the claim of ' + id + ' was abandoned; it cannot finish');
    check(o.result.worker === name, 'result.worker must be ' + name + ', who holds the lease');
    check(o.result.attempt === oldDoc.attempt, 'result.attempt must be ' + oldDoc.attempt);
    check(o.attempt === oldDoc.attempt, 'finishing cannot change the attempt');
    check(same(o.errors, oldDoc.errors), 'finishing cannot change the error history');
    return;
  }
  if (o.state === 'scheduled' || o.state === 'buried' || o.state === 'failed') {  // fail
    check(o.attempt === oldDoc.attempt, 'a failure cannot change the attempt');
    var grew = o.errors.length === oldDoc.errors.length + 1 ||
               (oldDoc.errors.length === MAX_ERRORS && o.errors.length === MAX_ERRORS);
    check(grew, 'a failure appends exactly one error record');
    var last = o.errors[o.errors.length - 1];
    check(isObject(last) && last.worker === name && last.attempt === oldDoc.attempt,
            'the new error record must name worker ' + name + ' and attempt ' + oldDoc.attempt);
    if (o.state === 'buried') {
      check(o.attempt >= o.max_attempts, 'a worker buries only after the last attempt');
    }
    return;
  }
  if (o.state === 'ready') {  // release
    check(o.attempt === oldDoc.attempt - 1, 'a release gives the attempt back');
    check(same(o.errors, oldDoc.errors), 'a release cannot change the error history');
    return;
  }
  deny('a worker cannot move an occurrence from leased to ' + o.state);
}
