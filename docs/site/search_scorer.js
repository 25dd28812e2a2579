// The course site's search scorer (conf.py's html_search_scorer; Sphinx puts it in language_data.js).
// Sphinx's default weights, with one change: a page scores by the largest match of any query word,
// so a page with one word of "residual normal" in a heading ties with one whose heading holds both.
// Here every query word in a heading of the page counts, and at equal match the chapters come
// before the results and the API reference, for a reader of the course.
var Scorer = {
  objNameMatch: 11,
  objPartialMatch: 6,
  objPrio: { 0: 15, 1: 5, 2: -5 },
  objPrioDefault: 0,
  title: 15,
  partialTitle: 7,
  term: 5,
  partialTerm: 2,
  score: ([docname, title, anchor, descr, score, filename, kind]) => {
    if (kind !== "text" || typeof Search === "undefined" || !Search._index) return score;
    const index = Search._index;
    const file = index.docnames.indexOf(docname);
    const query = new URLSearchParams(window.location.search).get("q") || "";
    const stemmer = new Stemmer();
    const inHeadings = splitQuery(query.toLowerCase()).filter((word) => {
      const files = index.titleterms[stemmer.stemWord(word)];
      return files !== undefined && (Array.isArray(files) ? files.includes(file) : files === file);
    }).length;
    return score + 2 * inHeadings + (docname.startsWith("solutions/") ? 3 : 0);
  },
};
