// Preloaded into PouchDB Server by hub/devserver.py (`node --require`): source fixes for
// places where PouchDB Server 4.2.0 breaks CouchDB 3 semantics that Couchfarm relies on.
// Each fix names the file it patches and the exact text of each edit, which must occur
// once; if it does not (a different version), the server refuses to start instead of
// running unpatched.
'use strict';
const Module = require('module');
const path = require('path');

const APPLIED = 'couchfarm pouchdb_fixes: applied';

const FIXES = [
  {
    // pouchdb-validation sets the incoming document's `_revisions` to the local winner's
    // history so that validate_doc_update can see one, and leaves it there. For a
    // replicated revision (new_edits=false) `_revisions`, or its absence (PouchDB's
    // replicator sends first-generation revisions without it), is what places the
    // revision in the tree, so every conflicting revision that arrived by replication
    // became a copy of the local one and was silently dropped whenever the database had
    // any validate_doc_update. CouchDB keeps it as a conflict. Show validation a history
    // as before, then give the document back exactly what it brought.
    file: path.join('pouchdb-validation', 'lib', 'index.js'),
    edits: [
      [
        '  newDoc._revisions = (oldDoc || {})._revisions;\n',
        '  var ownRevisions = newDoc._revisions;\n' +
          '  newDoc._revisions = ownRevisions || (oldDoc || {})._revisions;\n',
      ],
      [
        '      func.call(designDoc, newDoc, oldDoc, options.userCtx, options.secObj);\n' +
          '    });\n' +
          '  } catch (e) {\n',
        '      func.call(designDoc, newDoc, oldDoc, options.userCtx, options.secObj);\n' +
          '    });\n' +
          '    restoreRevisions(newDoc, ownRevisions);\n' +
          '  } catch (e) {\n' +
          '    restoreRevisions(newDoc, ownRevisions);\n',
      ],
    ],
    append:
      '\nfunction restoreRevisions(doc, own) {\n' +
      '  if (own === undefined) { delete doc._revisions; } else { doc._revisions = own; }\n' +
      '}\n',
  },
  {
    // pouchdb-update saves what an update function returns with `db.put(doc)` and no
    // options, so pouchdb-validation runs validate_doc_update with its default user
    // context, the admin-party `{name: null, roles: ['_admin']}`, which every
    // validate_doc_update lets through: any member could write anything an update function
    // returns. CouchDB checks that save as the user who called the function. The quorum
    // slot writes go through `_design/farm/_update/slot` (decision 17): validate them as
    // the caller, as CouchDB does.
    file: path.join('pouchdb-update', 'lib', 'index.js'),
    edits: [
      [
        '        savePromise = db[methodName](result[0]).then(function (resp) {\n',
        '        savePromise = db[methodName](result[0], {userCtx: req.userCtx, secObj: req.secObj})\n' +
          '          .then(function (resp) {\n',
      ],
    ],
  },
];

const originalCompile = Module.prototype._compile;
Module.prototype._compile = function (content, filename) {
  for (const fix of FIXES) {
    if (filename.endsWith(path.sep + fix.file)) {
      for (const [find, replace] of fix.edits) {
        if (content.split(find).length !== 2) {
          throw new Error(
            `couchfarm pouchdb_fixes: ${filename} does not contain the text this fix ` +
            'expects; is this the PouchDB Server version pinned in package.json?'
          );
        }
        content = content.split(find).join(replace);
      }
      content += fix.append || '';
      // hub/devserver.py refuses a server whose output lacks this line: a future version
      // that moved the file would otherwise start unpatched, silently.
      process.stdout.write(`${APPLIED} ${fix.file}\n`);
    }
  }
  return originalCompile.call(this, content, filename);
};
