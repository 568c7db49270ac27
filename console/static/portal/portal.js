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
