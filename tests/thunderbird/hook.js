// AutoConfig script (mozilla.cfg) for run.sh: fetch, act, quit. The first line is skipped.
/* global getenv, Services, ChromeUtils, Components */
(function () {
  const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
  const Ci = Components.interfaces;
  const done = (what) => {
    const path = getenv("TB_DONE_FILE");
    const file = Components.classes["@mozilla.org/file/local;1"].createInstance(Ci.nsIFile);
    file.initWithPath(path);
    const out = Components.classes["@mozilla.org/network/file-output-stream;1"].createInstance(Ci.nsIFileOutputStream);
    out.init(file, 0x02 | 0x08 | 0x20, 0o644, 0);
    out.write(what, what.length);
    out.close();
    Services.startup.quit(Ci.nsIAppStartup.eForceQuit);
  };
  const fail = (e) => done("error: " + e + "\n" + (e && e.stack ? e.stack : ""));
  const sleep = (ms) => new Promise((r) => {
    const t = Components.classes["@mozilla.org/timer;1"].createInstance(Ci.nsITimer);
    t.initWithCallback(() => r(), ms, Ci.nsITimer.TYPE_ONE_SHOT);
  });
  const urlDone = (start) => new Promise((resolve, reject) => {
    start({
      OnStartRunningUrl() {},
      OnStopRunningUrl(url, status) { status == 0 ? resolve() : reject("status " + status); },
    });
  });
  const copyDone = (start) => new Promise((resolve, reject) => {
    start({
      onStartCopy() {}, onProgress() {}, setMessageKey() {}, getMessageId() { return null; },
      onStopCopy(status) { status == 0 ? resolve() : reject("copy status " + status); },
    });
  });
  const messages = (folder) => [...folder.messages];

  async function fetchAll() {
    const password = getenv("TB_POP3_PASSWORD");
    for (const server of MailServices.accounts.allServers) {
      if (server.type != "pop3") continue;
      server.password = password;
      const inbox = server.rootFolder.getFolderWithFlags(Ci.nsMsgFolderFlags.Inbox);
      await urlDone((listener) => server.getNewMessages(inbox, null, listener));
    }
  }

  function pop3Servers() {
    return [...MailServices.accounts.allServers].filter((s) => s.type == "pop3");
  }

  async function folderAt(root, path) {
    let folder = root;
    for (const name of path.split("/")) {
      let child = folder.getChildNamed ? (folder.containsChildNamed(name) ? folder.getChildNamed(name) : null) : null;
      if (!child) {
        folder.createSubfolder(name, null);
        await sleep(200);
        child = folder.getChildNamed(name);
      }
      folder = child;
    }
    return folder;
  }

  async function act() {
    // The account acted on: the one of host $TB_ACT_ON, else the first.
    const host = getenv("TB_ACT_ON");
    // (`hostName` until ESR 140, `hostname` from ESR 153.)
    const server = pop3Servers().find((s) => !host || (s.hostname ?? s.hostName) == host);
    if (!server) throw "no POP3 account of host " + host;
    const inbox = server.rootFolder.getFolderWithFlags(Ci.nsMsgFolderFlags.Inbox);
    // Message numbers refer to the Inbox as it was after the fetch, in arrival order.
    const all = messages(inbox);
    const lines = (getenv("TB_ACTIONS") || "").split("\n").map((l) => l.trim()).filter((l) => l);
    for (const line of lines) {
      const [verb, n, ...rest] = line.split(/\s+/);
      const hdr = n ? all[Number(n) - 1] : null;
      if (n && !hdr) throw "no message " + n + " (" + all.length + " in the Inbox)";
      if (verb == "read") hdr.markRead(true);
      else if (verb == "flag") hdr.markFlagged(true);
      else if (verb == "delete") {
        await copyDone((l) => inbox.deleteMessages([hdr], null, false, false, l, false));
      } else if (verb == "move") {
        const dest = await folderAt(server.rootFolder, rest.join(" "));
        await copyDone((l) => MailServices.copy.copyMessages(inbox, [hdr], dest, true, l, null, false));
      } else if (verb == "compact") {
        for (const folder of server.rootFolder.descendants) {
          await urlDone((l) => folder.compact(l, null));
        }
      } else throw "unknown action " + verb;
      await sleep(100);
    }
    // Flags are written to the store as they change; the summary files on close.
    for (const folder of server.rootFolder.descendants) folder.msgDatabase = null;
  }

  Services.obs.addObserver(function observer() {
    Services.obs.removeObserver(observer, "final-ui-startup");
    fetchAll().then(act).then(() => sleep(500)).then(() => done("ok"), fail);
  }, "final-ui-startup");
})();
