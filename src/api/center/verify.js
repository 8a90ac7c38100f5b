// The access-log page's proof check, in the customer's browser, with
// WebCrypto only (SHA-256 and Ed25519): the vault's signed checkpoint is
// verified against its published key (C2SP signed-note), each entry's
// inclusion proof against that checkpoint (RFC 9162 2.1.3.2), and the
// checkpoint's consistency with the last one this browser verified
// (RFC 9162 2.1.4.2; kept in local storage).
"use strict";
(async function () {
  const status = document.getElementById("checkpoint-status");
  const say = (text) => { if (status) status.textContent = text; };
  const bytes = (base64) => Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const concat = (...parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  };
  const sha256 = async (data) => new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
  const node = (left, right) => sha256(concat(Uint8Array.of(1), left, right));
  const lsb = (n) => (n & 1n) === 1n;

  async function inclusionRoot(index, size, leaf, path) {
    if (index >= size) return null;
    let fn = index, sn = size - 1n, r = leaf;
    for (const p of path) {
      if (sn === 0n) return null;
      if (lsb(fn) || fn === sn) {
        r = await node(p, r);
        if (!lsb(fn)) { while (!lsb(fn) && fn !== 0n) { fn >>= 1n; sn >>= 1n; } }
      } else {
        r = await node(r, p);
      }
      fn >>= 1n; sn >>= 1n;
    }
    return sn === 0n ? r : null;
  }

  async function consistent(first, firstRoot, second, secondRoot, proof) {
    if (first === second) return proof.length === 0 && same(firstRoot, secondRoot);
    if (first === 0n || first > second || proof.length === 0) return false;
    let path = proof;
    if ((first & (first - 1n)) === 0n) path = [firstRoot, ...proof];
    let fn = first - 1n, sn = second - 1n;
    while (lsb(fn)) { fn >>= 1n; sn >>= 1n; }
    let fr = path[0], sr = path[0];
    for (const c of path.slice(1)) {
      if (sn === 0n) return false;
      if (lsb(fn) || fn === sn) {
        fr = await node(c, fr);
        sr = await node(c, sr);
        if (!lsb(fn)) { while (!lsb(fn) && fn !== 0n) { fn >>= 1n; sn >>= 1n; } }
      } else {
        sr = await node(sr, c);
      }
      fn >>= 1n; sn >>= 1n;
    }
    return sn === 0n && same(fr, firstRoot) && same(sr, secondRoot);
  }

  // A C2SP signed note: the body, a blank line, then "— name base64" lines.
  async function checkpointVerified(note, verifierKey) {
    // name+hash+base64: the base64 may hold '+' itself.
    const text = verifierKey.trim();
    const first = text.indexOf("+"), second = text.indexOf("+", first + 1);
    const [name, keyHash, keyText] = [text.slice(0, first), text.slice(first + 1, second), text.slice(second + 1)];
    const key = bytes(keyText);
    if (key.length !== 33 || key[0] !== 1) return null;
    const split = note.indexOf("\n\n");
    if (split < 0) return null;
    const body = note.slice(0, split + 1);
    const publicKey = await crypto.subtle.importKey("raw", key.slice(1), { name: "Ed25519" }, false, ["verify"]);
    for (const line of note.slice(split + 2).split("\n")) {
      const match = line.match(/^\u2014 (\S+) (\S+)$/);
      if (!match || match[1] !== name) continue;
      const signature = bytes(match[2]);
      const hash = Array.from(signature.slice(0, 4), (b) => b.toString(16).padStart(2, "0")).join("");
      if (hash !== keyHash) continue;
      const ok = await crypto.subtle.verify({ name: "Ed25519" }, publicKey, signature.slice(4), new TextEncoder().encode(body));
      if (ok) {
        const [origin, size, root] = body.split("\n");
        return { origin, size: BigInt(size), root: bytes(root) };
      }
    }
    return null;
  }

  try {
    const answer = await fetch("/access-log/proofs", { credentials: "same-origin" });
    if (!answer.ok) throw new Error("the proofs could not be fetched");
    const proofs = await answer.json();
    const checkpoint = await checkpointVerified(proofs.checkpoint, proofs.verifier_key);
    if (!checkpoint) { say("The log's checkpoint does NOT verify against the vault's key."); return; }
    let said = `Checkpoint of ${checkpoint.origin}, ${checkpoint.size} entries: signature verified.`;
    // The first checkpoint this browser verifies pins the log's name and
    // key; a later one under another name or key is not this log.
    const seen = JSON.parse(localStorage.getItem("consentvault-checkpoint") || "null");
    if (seen && (seen.origin !== checkpoint.origin || seen.key !== proofs.verifier_key)) {
      say(said + " But the log's name or signing key is NOT the one this browser verified before: nothing is marked.");
      return;
    }
    if (seen && BigInt(seen.size) > 0n) {
      const old = BigInt(seen.size);
      if (old > checkpoint.size) {
        say(said + ` It is SMALLER than the one this browser saw before (${old} entries): entries were removed.`);
        return;
      } else {
        const proof = await (await fetch(`/access-log/consistency?old_size=${old}&new_size=${checkpoint.size}`, { credentials: "same-origin" })).json();
        const ok = await consistent(old, bytes(seen.root), checkpoint.size, checkpoint.root, (proof.hashes || []).map(bytes));
        said += ok ? ` It extends the one this browser saw before (${old} entries): nothing was removed or rewritten.`
                   : ` It is NOT consistent with the one this browser saw before (${old} entries).`;
        if (!ok) { say(said); return; }
      }
    }
    const root = btoa(String.fromCharCode(...checkpoint.root));
    localStorage.setItem("consentvault-checkpoint",
      JSON.stringify({ origin: checkpoint.origin, key: proofs.verifier_key, size: checkpoint.size.toString(), root }));
    for (const item of proofs.items) {
      const entry = document.querySelector(`li[data-index="${item.index}"]`);
      const row = entry && entry.querySelector(".proof");
      if (!row) continue;
      const entryBytes = bytes(item.entry);
      const leaf = await sha256(concat(Uint8Array.of(0), entryBytes));
      const computed = await inclusionRoot(BigInt(item.index), checkpoint.size, leaf, item.hashes.map(bytes));
      const included = computed !== null && same(computed, checkpoint.root);
      // What the row says must be what the verified entry says.
      let agrees = false;
      try {
        const event = JSON.parse(new TextDecoder().decode(entryBytes));
        agrees = event.kind === "data.read" && (event.business || "") === entry.dataset.business &&
          (event.fields || []).join(",") === entry.dataset.fields && event.time === entry.dataset.time;
      } catch (_) { agrees = false; }
      const ok = included && agrees;
      row.textContent = ok ? "verified" : (included ? "NOT verified: the log says otherwise" : "NOT verified");
      row.className = ok ? "proof verified" : "proof failed";
    }
    say(said);
  } catch (error) {
    say("The proofs could not be checked: " + error.message);
  }
})();
