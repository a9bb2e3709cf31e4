/* The console's navigation sidebar starts closed, so that the lists get the whole width; once an operator
 * opens or closes it, Django's own nav_sidebar.js remembers that choice (the same localStorage key). Runs
 * before nav_sidebar.js (which is deferred). */
(function () {
  "use strict";
  var KEY = "django.admin.navSidebarIsOpen";
  try {
    if (window.localStorage.getItem(KEY) === null) window.localStorage.setItem(KEY, "false");
  } catch (e) {
    /* storage switched off: Django's script opens the sidebar, as before */
  }
})();
