// Tollgate dashboard behaviour: copy buttons, confirmations and snippet tabs. No library.
"use strict";

document.addEventListener("click", async (event) => {
  const copy = event.target.closest("[data-copy-target]");
  if (copy) {
    const source = document.getElementById(copy.dataset.copyTarget);
    const text = "value" in source && source.value !== undefined ? source.value : source.textContent;
    try {
      await navigator.clipboard.writeText(text.trim());
    } catch (_) {
      // Clipboard API needs a secure context; fall back to selecting the text.
      if (source.select) { source.select(); document.execCommand("copy"); }
    }
    const label = copy.textContent;
    copy.textContent = "Copied";
    copy.setAttribute("aria-live", "polite");
    setTimeout(() => { copy.textContent = label; }, 2000);
    return;
  }
  const tab = event.target.closest("[role=tab]");
  if (tab) {
    const list = tab.closest("[role=tablist]");
    for (const other of list.querySelectorAll("[role=tab]")) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      document.getElementById(other.getAttribute("aria-controls")).hidden = !selected;
    }
  }
});

document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// Filters submit as soon as a choice changes; the button stays for keyboard and no-JS use.
document.addEventListener("change", (event) => {
  const form = event.target.closest("form[data-autosubmit]");
  if (form) form.requestSubmit();
});

// The channel form shows only the fields of the chosen provider type (each such field
// names its types in data-providers); without JS every field stays visible.
function showProviderFields(select) {
  const form = select.form;
  for (const input of form.querySelectorAll("[data-providers]")) {
    const field = input.closest(".field") || input;
    field.hidden = !input.dataset.providers.split(" ").includes(select.value);
  }
}
document.addEventListener("change", (event) => {
  if (event.target.matches("[data-provider-select]")) showProviderFields(event.target);
});
document.addEventListener("DOMContentLoaded", () => {
  for (const select of document.querySelectorAll("[data-provider-select]")) showProviderFields(select);
});
