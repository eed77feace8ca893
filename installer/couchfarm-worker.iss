; Inno Setup 6 script: the Couchfarm worker for Windows, installed per user (no admin).
;
;   pyinstaller --noconfirm --distpath installer\dist --workpath installer\build installer\couchfarm-worker.spec
;   "C:\Program Files (x86)\Inno Setup 6\ISCC.exe" /DAppVersion=0.1.0 installer\couchfarm-worker.iss
;
; Output: installer\dist\couchfarm-worker-<version>-setup.exe. .github/workflows/windows.yml
; does all of this on windows-latest; docs/PACKAGING.md explains each choice.
;
; - Installs installer\dist\couchfarm-worker\ (PyInstaller one-folder) into
;   %LOCALAPPDATA%\Programs\Couchfarm: {autopf} is that folder when Setup runs without
;   admin rights (PrivilegesRequired=lowest).
; - Start menu: "Couchfarm" (the tray app) and "Uninstall Couchfarm".
; - Task "Start Couchfarm when I log in": the HKCU Run value "Couchfarm", the same value the
;   app's own Settings checkbox reads and writes (desktop_worker/tray/autostart.py).
; - Launches the app at the end; with no settings yet it shows its first-run wizard.
; - The uninstaller stops the app, removes the Run value, and asks whether to delete the
;   local data: settings (%APPDATA%\Couchfarm), history and the spool of results not yet
;   delivered (%LOCALAPPDATA%\Couchfarm), and the saved password (Credential Manager).

#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif
#define AppName "Couchfarm"
#define AppExe "couchfarm-worker.exe"
#define CliExe "desktop-worker-cli.exe"
#define RunKey "Software\Microsoft\Windows\CurrentVersion\Run"
#define RunValue "Couchfarm"
#define KeyringTarget "couchfarm"

[Setup]
; AppId identifies the installation for upgrades and the uninstaller: never change it.
AppId={{5B0C3A8E-7F2D-4C6B-9E1A-2D4F6A8C0B13}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher=Couchfarm
AppComments=Runs Couchfarm jobs while this computer is free
VersionInfoVersion={#AppVersion}
; Per-user: no UAC prompt, installs under %LOCALAPPDATA%\Programs, registry under HKCU.
PrivilegesRequired=lowest
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
DisableDirPage=auto
UsePreviousTasks=yes
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
MinVersion=10.0.17763
OutputDir=dist
OutputBaseFilename=couchfarm-worker-{#AppVersion}-setup
SetupIconFile=couchfarm.ico
UninstallDisplayIcon={app}\{#AppExe}
UninstallDisplayName={#AppName}
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
; The running app holds its files: Setup stops it first (see PrepareToInstall).
CloseApplications=yes
RestartApplications=no

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "startatlogin"; Description: "Start Couchfarm when I log in"; GroupDescription: "When Windows starts:"
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
Source: "dist\couchfarm-worker\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[InstallDelete]
; An upgrade replaces the bundle whole: no library of an older version may linger.
Type: filesandordirs; Name: "{app}\_internal"

[Icons]
Name: "{group}\{#AppName}"; Filename: "{app}\{#AppExe}"; Comment: "Runs Couchfarm jobs while this computer is free"
Name: "{group}\Uninstall {#AppName}"; Filename: "{uninstallexe}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExe}"; Tasks: desktopicon

[Registry]
; Start at login (HKCU, this user only). Unticked on an upgrade: the value goes.
Root: HKCU; Subkey: "{#RunKey}"; ValueType: string; ValueName: "{#RunValue}"; ValueData: """{app}\{#AppExe}"""; Tasks: startatlogin; Flags: uninsdeletevalue
Root: HKCU; Subkey: "{#RunKey}"; ValueType: none; ValueName: "{#RunValue}"; Flags: deletevalue; Tasks: not startatlogin

[Run]
; The app shows its first-run wizard itself when it has no settings yet.
Filename: "{app}\{#AppExe}"; Description: "Start Couchfarm now"; Flags: nowait postinstall skipifsilent

[UninstallRun]
; Stop the tray app (and a headless worker started from this folder). Runs in progress are
; not handed back: their leases expire and the hub gives them to another worker.
Filename: "{sys}\taskkill.exe"; Parameters: "/F /T /IM {#AppExe}"; Flags: runhidden; RunOnceId: "StopTray"
Filename: "{sys}\taskkill.exe"; Parameters: "/F /T /IM {#CliExe}"; Flags: runhidden; RunOnceId: "StopCli"

[UninstallDelete]
Type: filesandordirs; Name: "{app}\_internal"

[Code]
var
  DeleteLocalData: Boolean;

function StopRunningApp(): Boolean;
var
  Code: Integer;
begin
  Result := Exec(ExpandConstant('{sys}\taskkill.exe'), '/F /T /IM {#AppExe}', '',
    SW_HIDE, ewWaitUntilTerminated, Code);
end;

function PrepareToInstall(var NeedsRestart: Boolean): String;
begin
  { An older version still running would keep its DLLs locked. }
  StopRunningApp();
  Result := '';
end;

function LocalDataFolder(): String;
begin
  Result := ExpandConstant('{localappdata}\Couchfarm');
end;

function SettingsFolder(): String;
begin
  Result := ExpandConstant('{userappdata}\Couchfarm');
end;

procedure DeleteSavedPassword();
var
  Code: Integer;
begin
  { keyring's Windows backend stores the worker password as a generic credential whose
    target is the service name. }
  Exec(ExpandConstant('{sys}\cmdkey.exe'), '/delete:{#KeyringTarget}', '', SW_HIDE,
    ewWaitUntilTerminated, Code);
end;

procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
var
  Answer: Integer;
begin
  if CurUninstallStep = usUninstall then
  begin
    { Keep the data unless the user says otherwise; a silent uninstall keeps it. }
    DeleteLocalData := False;
    if not UninstallSilent() then
    begin
      Answer := MsgBox('Also delete Couchfarm''s local data?' + #13#10 + #13#10 +
        'Yes deletes your settings, the saved worker password, the run history and the ' +
        'spool: results this computer has not delivered to the hub yet are lost.' + #13#10 +
        '  ' + SettingsFolder() + #13#10 +
        '  ' + LocalDataFolder() + #13#10 + #13#10 +
        'No keeps them, so a later installation carries on where this one stopped.',
        mbConfirmation, MB_YESNO or MB_DEFBUTTON2);
      DeleteLocalData := (Answer = IDYES);
    end;
  end;
  if CurUninstallStep = usPostUninstall then
  begin
    { The app's own "start at login" setting writes the same value: remove it either way. }
    RegDeleteValue(HKEY_CURRENT_USER, '{#RunKey}', '{#RunValue}');
    if DeleteLocalData then
    begin
      DelTree(SettingsFolder(), True, True, True);
      DelTree(LocalDataFolder(), True, True, True);
      DeleteSavedPassword();
    end;
  end;
end;
