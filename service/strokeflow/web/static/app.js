// Confirm before destructive actions, and optionally refresh the jobs list.
document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});
document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("autorefresh");
  if (!box) return;
  box.checked = sessionStorage.getItem("strokeflow-autorefresh") === "1";
  let timer = null;
  const apply = () => {
    sessionStorage.setItem("strokeflow-autorefresh", box.checked ? "1" : "0");
    if (timer) clearInterval(timer);
    timer = box.checked ? setInterval(() => window.location.reload(), 10000) : null;
  };
  box.addEventListener("change", apply);
  apply();
});
