"use strict";
// The "Restore…" dialog of the dashboard and the admin's backup page (templates/backups/restore_dialog.html).
// Any element with data-restore-backup="<id>" opens it; on the dashboard every finished backup's row gets one.
(() => {
  const dialog = document.getElementById("restore-dialog");
  if (!dialog) return;
  const $ = (id) => document.getElementById(id);
  const csrfToken = dialog.querySelector("input[name=csrfmiddlewaretoken]").value;
  const ACTIVE = new Set(["queued", "running"]);
  const state = {backupId: null, contents: null, targets: [], planned: null, plan: null, runId: null, timer: null};

  function fileSize(bytes) {
    const units = ["bytes", "KB", "MB", "GB", "TB"];
    let value = Number(bytes) || 0, unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return unit === 0 ? `${value} bytes` : `${value.toFixed(1)} ${units[unit]}`;
  }
  function detailOf(data) {
    if (!data || typeof data !== "object") return "";
    if (data.detail) return String(data.detail);
    return Object.entries(data).map(([key, value]) => `${key}: ${[].concat(value).join(" ")}`).join("; ");
  }
  async function api(method, url, body) {
    const response = await fetch(url, {
      method, credentials: "same-origin",
      headers: {"Accept": "application/json", "Content-Type": "application/json", "X-CSRFToken": csrfToken},
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (error) { data = null; }
    if (!response.ok) throw new Error(detailOf(data) || `HTTP ${response.status}`);
    return data;
  }
  const status = (message) => { $("restore-status").textContent = message; };

  function chosen() {
    const option = $("restore-what").selectedOptions[0];
    if (!option) return null;
    const paths = $("restore-paths").value.split(",").map((p) => p.trim()).filter(Boolean);
    return {component: option.dataset.component, path: option.value, target: $("restore-target").value, paths};
  }
  const keyOf = (choice) => JSON.stringify(choice);

  function fillTargets() {
    const choice = chosen();
    const select = $("restore-target");
    select.replaceChildren();
    for (const target of state.targets.filter((t) => choice && t.kind === choice.component)) {
      select.append(new Option(target.name, target.name));
    }
    $("restore-paths-label").hidden = !choice || choice.component !== "files";
    const none = choice && select.options.length === 0;
    $("restore-note").hidden = !none;
    $("restore-note").textContent = none
      ? `No ${choice.component === "database" ? "database target (RESTORE_TARGETS)" : "restore directory (RESTORE_DIRECTORIES)"} is configured on the server.`
      : "";
    changed();
  }
  function changed() {
    const choice = chosen();
    const ready = Boolean(choice && choice.target) && state.runId === null;
    $("restore-dry-run").disabled = !ready;
    const planned = ready && state.planned === keyOf(choice);
    $("restore-confirm-label").hidden = !planned;
    $("restore-go").disabled = !(planned && $("restore-confirm").value.trim() === state.backupId);
    if (!planned) { $("restore-plan").hidden = true; }
  }

  function describePlan(result) {
    if (result.error) return `The dry run found a problem: ${result.error}`;
    if (result.database) {
      const plan = result.database, target = plan.target, dump = plan.dump;
      const lines = [
        `Would restore ${dump.path} (${fileSize(dump.size_bytes)}, ${dump.format}, database ${dump.database}).`,
        target.empty
          ? `The target database ${target.database} is empty (${fileSize(target.size_bytes)}).`
          : `The target database ${target.database} is NOT empty: ${target.objects} objects, ${target.tables.length} tables, ${fileSize(target.size_bytes)}. Everything in it would be replaced.`,
      ];
      for (const table of target.tables.slice(0, 30)) lines.push(`  ${table.table}: ${table.rows} rows`);
      return lines.join("\n");
    }
    const plan = result.files || {};
    const lines = [
      `Would create the folder ${plan.would_create} with ${plan.files} files and ${plan.dirs} folders (${fileSize(plan.bytes)}).`,
    ];
    if (plan.skipped) lines.push(`${plan.skipped} members are outside the chosen paths.`);
    if (plan.refused_count) {
      lines.push(`${plan.refused_count} members would be refused:`);
      for (const refusal of plan.refused.slice(0, 30)) lines.push(`  ${refusal.path}: ${refusal.reason}`);
    }
    if (plan.error) lines.push(`Problem: ${plan.error}`);
    return lines.join("\n");
  }
  function describeDone(run) {
    const result = run.result || {};
    if (run.status !== "succeeded") {
      const why = result.error || run.error || run.status;
      return `Restore ${run.status}: ${why}${result.complete === false ? " (the restore is incomplete)" : ""}`;
    }
    if (result.database) {
      return `Restored ${result.database.tables} tables, ${result.database.rows} rows into the database target ${result.target}.`;
    }
    const files = result.files || {};
    const refused = files.refused_count ? `; ${files.refused_count} members refused` : "";
    return `Extracted ${files.files} files into the folder ${files.folder} of ${result.target}${refused}.`;
  }

  async function start(dryRun) {
    const choice = chosen();
    if (!choice) return;
    const body = {component: choice.component, target: choice.target, dryRun};
    if (choice.component === "database") {
      body.dump = choice.path;
      if (!dryRun) body.confirm = $("restore-confirm").value.trim();
    } else {
      body.archive = choice.path;
      if (choice.paths.length) body.paths = choice.paths;
    }
    status(dryRun ? "Dry run queued…" : "Restore queued…");
    try {
      const answer = await api("POST", `/api/backup/${encodeURIComponent(state.backupId)}/restore`, body);
      state.runId = answer.run.id;
    } catch (error) {
      status(`Refused: ${error.message}`);
      return;
    }
    $("restore-progress").hidden = false;
    $("restore-progress").value = 0;
    $("restore-cancel").hidden = false;
    changed();
    follow(dryRun, keyOf(choice));
  }
  function follow(dryRun, key) {
    clearTimeout(state.timer);
    state.timer = setTimeout(async () => {
      let run;
      try {
        run = await api("GET", `/api/backup/runs/${state.runId}`);
      } catch (error) {
        status(`Cannot read the run: ${error.message}`);
        follow(dryRun, key);
        return;
      }
      $("restore-progress").value = run.progress.percent;
      if (ACTIVE.has(run.status)) {
        status(`${dryRun ? "Dry run" : "Restore"} ${run.status}: ${run.progress.percent}% ${run.progress.message || ""}`);
        follow(dryRun, key);
        return;
      }
      state.runId = null;
      $("restore-cancel").hidden = true;
      if (dryRun) {
        const ok = run.status === "succeeded" && !(run.result || {}).error;
        state.planned = ok ? key : null;
        $("restore-plan").textContent = describePlan(run.result || {error: run.error || run.status});
        changed();
        $("restore-plan").hidden = false;
        status(ok ? `Dry run done. Type ${state.backupId} to confirm the restore.` : `Dry run ${run.status}.`);
      } else {
        state.planned = null;
        changed();
        status(describeDone(run));
      }
    }, 600);
  }

  async function open(backupId) {
    Object.assign(state, {backupId, contents: null, planned: null, runId: null});
    clearTimeout(state.timer);
    $("restore-backup-id").textContent = backupId;
    $("restore-what").replaceChildren();
    $("restore-target").replaceChildren();
    $("restore-confirm").value = "";
    $("restore-paths").value = "";
    $("restore-plan").hidden = true;
    $("restore-progress").hidden = true;
    $("restore-cancel").hidden = true;
    status("Reading the backup's contents…");
    if (!dialog.open) dialog.showModal();
    try {
      const [contents, targets] = await Promise.all([
        api("GET", `/api/backup/${encodeURIComponent(backupId)}/contents`),
        api("GET", "/api/backup/restore/targets"),
      ]);
      state.contents = contents;
      state.targets = targets.targets;
    } catch (error) {
      status(`Cannot read the backup: ${error.message}`);
      return;
    }
    const what = $("restore-what");
    for (const dump of state.contents.dumps) {
      const option = new Option(`Database ${dump.database} — ${dump.path} (${fileSize(dump.size_bytes)})`, dump.path);
      option.dataset.component = "database";
      what.append(option);
    }
    for (const archive of state.contents.archives) {
      const option = new Option(`Files — ${archive.path} (${fileSize(archive.size_bytes)})`, archive.path);
      option.dataset.component = "files";
      what.append(option);
    }
    status(what.options.length ? "Pick what to restore and where, then run a dry run." : "This backup holds no dump or archive.");
    fillTargets();
  }

  $("restore-what").addEventListener("change", fillTargets);
  $("restore-target").addEventListener("change", changed);
  $("restore-paths").addEventListener("input", changed);
  $("restore-confirm").addEventListener("input", changed);
  $("restore-dry-run").addEventListener("click", () => start(true));
  $("restore-go").addEventListener("click", () => start(false));
  $("restore-close").addEventListener("click", () => dialog.close());
  $("restore-cancel").addEventListener("click", async () => {
    if (!state.runId) return;
    try {
      await api("POST", `/api/backup/runs/${state.runId}/cancel`, {});
      status("Cancelling…");
    } catch (error) {
      status(`Cannot cancel: ${error.message}`);
    }
  });
  dialog.addEventListener("close", () => { if (!state.runId) clearTimeout(state.timer); });
  document.addEventListener("click", (event) => {
    const opener = event.target.closest("[data-restore-backup]");
    if (!opener) return;
    event.preventDefault();
    open(opener.dataset.restoreBackup);
  });

  // The dashboard re-renders its table from the API: each finished backup's row gets its button again.
  const table = document.querySelector("#backups-table tbody");
  if (table) {
    const addButtons = () => {
      for (const row of table.querySelectorAll("tr[data-backup-id]")) {
        if (row.querySelector(".rd-open") || row.querySelector('.bd-badge[data-status="running"]')) continue;
        const button = document.createElement("button");
        button.type = "button";
        button.className = "bd-btn rd-open";
        button.dataset.restoreBackup = row.dataset.backupId;
        button.textContent = "Restore…";
        row.cells[row.cells.length - 1].append(button);
      }
    };
    new MutationObserver(addButtons).observe(table, {childList: true});
    addButtons();
  }
})();
