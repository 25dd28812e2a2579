// A display formula a little wider than the text column (the course has a few at 1280 px) is set
// in a smaller size to fit, down to 80%; a wider one scrolls inside its own box (course.css), as
// most do on a phone.
window.addEventListener("load", async () => {
  if (!(window.MathJax && MathJax.startup)) return;
  await MathJax.startup.promise;
  const formulas = [...document.querySelectorAll('mjx-container[display="true"]')];
  const fit = () => {
    for (const m of formulas) {
      m.dataset.size ??= getComputedStyle(m).fontSize;  // the size MathJax chose, in px
      m.style.fontSize = m.dataset.size;
      const ratio = m.clientWidth / m.scrollWidth;
      if (ratio < 1 && ratio >= 0.8) m.style.fontSize = `${parseFloat(m.dataset.size) * ratio * 0.99}px`;
    }
  };
  fit();
  window.addEventListener("resize", fit);
});
