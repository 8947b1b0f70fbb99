// Revocation needs a deliberate second step: the Revoke button opens a confirmation dialog
// naming the pump; only its confirm button submits (with confirm=yes). Without JavaScript the
// server shows the same confirmation as a page.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const dialog = document.getElementById("confirm-dialog");
  if (!dialog || typeof dialog.showModal !== "function") return;
  let pending = null;
  document.querySelectorAll("form.revoke-form").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (form.elements.confirm.value === "yes") return;
      event.preventDefault();
      pending = form;
      document.getElementById("confirm-cn").textContent = form.dataset.cn;
      document.getElementById("confirm-serial").textContent = form.dataset.serial;
      dialog.showModal();
    });
  });
  dialog.addEventListener("close", () => {
    if (pending && dialog.returnValue === "revoke") {
      pending.elements.reason.value = document.getElementById("confirm-reason").value;
      pending.elements.confirm.value = "yes";
      pending.submit();
    }
    pending = null;
  });
});
